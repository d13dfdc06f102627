"""`traitlab export`.  python launchers/export.py trait=starter/optimism method=mean_diff layers=10"""

from traitlab.cli import launch

if __name__ == "__main__":
    launch("export")
