"""``keygen``: an Ed25519 key pair for signing model bundles (``edge.signing``, ``cryptography``).

Writes ``<name>.key`` (PKCS #8 PEM, mode 0600: it stays on the deploy workstation) and
``<name>.pub`` (the stations' ``model.trusted_keys``). Existing files are kept unless ``--force``.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keygen", help="write an Ed25519 key pair for signing bundles", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for <name>.key and <name>.pub")
    p.add_argument("--name", default="deploy", help="file name stem (default: deploy)")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.errors import ModelError
    from edge.signing import generate, load_public_key

    if not args.name or "/" in args.name or args.name.startswith("."):
        raise ModelError(f"--name {args.name!r}: a plain file name stem, like deploy")
    priv, pub = generate(args.out, args.name, args.force)
    kid = load_public_key(pub).key_id
    print(f"wrote {priv} (private, keep it secret) and {pub} (key id {kid}: list it in model.trusted_keys)")
    return 0
