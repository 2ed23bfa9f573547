"""``python -m qwen_sse``: the same as the ``qwen-sse`` command."""

import sys

from qwen_sse.cli import main

sys.exit(main())
