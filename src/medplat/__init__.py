"""medplat: a compliant hybrid edge + cloud platform for connected medical devices."""
__version__ = "0.1.0"
PROJECT = "medplat"
