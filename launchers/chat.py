"""Chat with the steered model.  python launchers/chat.py vectors=starter/optimism coefficient=8  (or: traitlab chat)"""

from traitlab.cli import launch

if __name__ == "__main__":
    launch("chat")
