"""``python -m jaxdeca.convert {deca,vgg19,vggface2,resnet50} --src FILE --out DIR``."""

from __future__ import annotations

import argparse
import sys

from jaxdeca.convert import CONVERTERS, ConversionError, save_variables


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxdeca.convert", description=__doc__)
    parser.add_argument("kind", choices=sorted(CONVERTERS))
    parser.add_argument("--src", required=True, help="official weight file")
    parser.add_argument("--out", required=True, help="new orbax checkpoint directory")
    args = parser.parse_args(argv)
    try:
        out = save_variables(CONVERTERS[args.kind](args.src), args.out)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
