"""Where the KVM device is: written once here, and cheap to import (the CLI's option defaults use it
before anything loads the compiled bindings)."""

#: The KVM system device every command opens unless ``--kvm`` says otherwise.
DEFAULT_DEVICE_PATH = "/dev/kvm"
