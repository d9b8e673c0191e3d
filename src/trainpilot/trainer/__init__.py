"""The reference computer-vision trainer behind `trainpilot train` and `trainpilot demo`."""
