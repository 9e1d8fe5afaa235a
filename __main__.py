"""Pulumi entry point: `pulumi up` runs this file with the selected stack's config."""
from medplat.program import main

main()
