"""Stage 2: validate trait vectors by steering.  python launchers/steer.py trait=starter/optimism judge=hf_local"""

from traitlab.cli import launch

if __name__ == "__main__":
    launch("steer")
