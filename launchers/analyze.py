"""Analyses of vectors and scores.  python launchers/analyze.py analysis=geometry layers='10,12'"""

from traitlab.cli import launch

if __name__ == "__main__":
    launch("analyze")
