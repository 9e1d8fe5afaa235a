"""medplat's CrossGuard policies: importable on their own (no gRPC server starts here).

The pack entry point (`policies/pack/__main__.py`) is the only place a PolicyPack is built,
because constructing one starts the analyzer server and blocks.
"""
