"""Claude Code slash-command files (``/mahabharatha:*``), installed by ``mahabharatha install-commands``."""
