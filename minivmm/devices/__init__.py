"""Device models and the bus they sit on. Devices see offsets into their own range, never absolute addresses."""
