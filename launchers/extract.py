"""Stage 1: extract trait vectors.  python launchers/extract.py -m method=probe,mean_diff layers=all"""

from traitlab.cli import launch

if __name__ == "__main__":
    launch("extract")
