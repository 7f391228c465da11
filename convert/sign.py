"""``sign``: a detached Ed25519 signature over a bundle's manifest (``BUNDLE/manifest.sig``).

The manifest pins every file's sha256, so the one signature covers the bundle. Every sha256 is
checked before signing: only a bundle a station would load gets signed. Stations with
``model.trusted_keys`` refuse bundles without a valid signature by one of their keys.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sign", help="sign a model bundle's manifest (Ed25519)", description=__doc__.splitlines()[0])
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory (convert export)")
    p.add_argument("--key", required=True, metavar="FILE.key", help="private key from convert keygen")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.bundle import load_bundle
    from edge.signing import load_private_key, sign_bundle

    load_private_key(args.key)  # a wrong key file is named before the bundle is read
    load_bundle(args.bundle, verify=True)  # sign only what a station would accept: every sha256 checked
    out, kid = sign_bundle(args.bundle, args.key)
    print(f"wrote {out} (key id {kid})")
    return 0
