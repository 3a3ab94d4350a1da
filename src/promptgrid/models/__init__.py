"""The image models' inputs: the built-in catalog and the checks every input passes before it is sent."""
