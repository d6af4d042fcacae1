"""argparse types shared by the command-line tools (the apps, prepare, the NoW evaluation)."""
import argparse


def positive_int(text: str) -> int:
    """argparse type of a count or size that must be at least 1 (--batch, --frames, --max-side)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n
