"""``vafusion``: checks to run before a long workflow run.

    vafusion device                      what device: auto picks here, and why
    vafusion weights iresnet50 FILE      does FILE fit the network? (strict; prints its sha256)

The workflow itself runs with ``snakemake`` from the repository (see the README).
"""

from __future__ import annotations

import argparse
import logging
import sys

import vafusion


def check_weights(network: str, path: str) -> str:
    """Load ``path`` strictly into ``network`` (safe loading); a line for the README's
    table of tested weights, or WeightsError."""
    from vafusion.models.iresnet import iresnet50
    from vafusion.models.vggish import VGGish, VGGishPCA
    from vafusion.weights import load_weights

    model = {"iresnet50": iresnet50, "vggish": VGGish, "vggish_pca": VGGishPCA}[network]()
    info = load_weights(model, path, what=network)
    return f"{network}: {path} fits (sha256 {info['weights_sha256']})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vafusion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"vafusion {vafusion.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("device", help="the device 'auto' picks on this machine, and why")
    weights = commands.add_parser("weights", help="check that a checkpoint fits a network")
    weights.add_argument("network", choices=["iresnet50", "vggish", "vggish_pca"])
    weights.add_argument("path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    if args.command == "device":
        from vafusion.devices import cuda_status, resolve_device

        print(f"auto -> {resolve_device('auto')}: {cuda_status()[1]}")
        return 0
    from vafusion.weights import WeightsError

    try:
        print(check_weights(args.network, args.path))
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
