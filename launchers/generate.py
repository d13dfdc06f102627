"""Stage 4: generate with vectors applied.  python launchers/generate.py vectors=starter/optimism coefficient=8"""

from traitlab.cli import launch

if __name__ == "__main__":
    launch("generate")
