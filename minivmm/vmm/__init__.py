"""The VMM proper: guest layout and boot state, image loading, exit dispatch, the vCPU loop, the machine."""
