"""Stage 3: per-token trait scores.  python launchers/infer.py prompt_set=starter layers='best,best+5'"""

from traitlab.cli import launch

if __name__ == "__main__":
    launch("infer")
