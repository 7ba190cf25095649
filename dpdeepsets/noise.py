"""Where the randomness that protects privacy comes from: a secret key, or fresh OS entropy.

A Gaussian release (or a DP-SGD fit) is differentially private only if nobody can recompute
its noise. A seed derived from public values (a config seed, the set name, epsilon) makes
the release exactly invertible, so no seed is ever derived from public values alone, and no
seed is ever written to a ledger, a release, an adapter or a log.

Sources (``privacy.noise``)
---------------------------
``keyed`` (default)
    A secret key K (256 bits) and the *cell identity* of the release (method, private set,
    epsilon, seed, purpose) give the noise: ``HMAC-SHA256(K, identity)`` seeds the
    generator. Same key, same noise (reproducible research runs); without the key the noise
    is unpredictable (HMAC is a pseudo-random function). The ledger records
    :func:`key_fingerprint` (an HMAC of a fixed label, from which neither the key nor any
    noise follows), so two runs can be told apart or matched without revealing the key.
``secure``
    256 fresh bits from the OS entropy pool (``secrets``) for every release and every DP-SGD
    cell: never reproducible, by design.
``public_seed`` (unit tests and audits only; no pipeline config accepts it)
    A seed given in the clear. Its ledger entries say ``private: false``.

The key file
------------
``privacy.key_file`` names it; when null the workflow creates one per results directory on
first use (``{results_dir}/.secret/noise.key``, rule ``noise_key``), so a fresh results
directory gets fresh noise. It holds 64 hexadecimal characters (``openssl rand -hex 32``
makes one), is created with mode 0600, and is refused when group or others may read it.
Its directory is set to mode 0700 when :func:`create_key` makes it or when it is the
workflow's ``.secret`` (Snakemake makes it, with the umask's usual 0755, before the rule
runs); any other existing directory is left as it is, since it may be shared. Keep the key
secret: whoever holds it can remove the noise from every release made with it. Publish
everything else.

Floating point. Gaussian samples are floating-point numbers from a pseudo-random generator
(numpy PCG64DXSM seeded with 256 bits; torch's generator, seeded with 64 bits derived from
the same HMAC, for opacus). Their low-order bits are not a proof of privacy (Mironov 2012);
``secure`` DP-SGD uses opacus' mitigation (each noise tensor is a sum of four draws).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import stat
from pathlib import Path

import numpy as np

__all__ = ["NoiseKeyError", "NOISE_SOURCES", "KEY_BYTES", "NoiseSource", "KeyedNoise",
           "SecureNoise", "PublicSeedNoise", "create_key", "load_key", "key_fingerprint",
           "cell_identity", "noise_source"]

NOISE_SOURCES = ("keyed", "secure")  # what a pipeline config may choose
KEY_BYTES = 32
_LABEL = b"dpdeepsets/noise/v1\x00"
_FINGERPRINT_LABEL = b"dpdeepsets/key-fingerprint/v1"
KEY_DIR_NAME = ".secret"  # the workflow's key directory: {results_dir}/.secret/noise.key


class NoiseKeyError(ValueError):
    """The key file is missing, malformed, or readable by others (the message names it)."""


# ---------------------------------------------------------------- the key file

def create_key(path: str | os.PathLike) -> Path:
    """Write a fresh 256-bit key (hex) to ``path`` with mode 0600; never overwrite one.

    The parent directory gets mode 0700 when this call creates it or when it is named
    ``.secret`` (the workflow's key directory, which Snakemake creates with the umask's mode
    before rule ``noise_key`` runs) and belongs to this user. Any other existing directory
    is left as it is: it may be shared (``/tmp``, a home directory). The key is written to a
    temporary file opened with ``O_EXCL`` and mode 0600, then linked into place, so no other
    user can read it at any moment and a concurrent creator cannot be overwritten (the first
    one wins).
    """
    path = Path(path)
    parent = path.parent
    created = not parent.exists()
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if created or (parent.name == KEY_DIR_NAME and parent.stat().st_uid == os.getuid()):
        os.chmod(parent, 0o700)  # mkdir's mode is masked by the umask and ignored if it exists
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(KEY_BYTES) + "\n")
        try:
            os.link(tmp, path)  # fails if a key is already there: never replace one
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_key(path: str | os.PathLike) -> bytes:
    """The 32-byte key in ``path`` (64 hex characters, optional trailing newline).

    Raises :class:`NoiseKeyError` when the file is missing, is readable or writable by group
    or others, or does not hold exactly 64 hex characters.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NoiseKeyError(f"noise key {path} does not exist: create one with "
                            f"`python -m dpdeepsets.noise new-key {path}` (or "
                            f"`openssl rand -hex 32 > {path}; chmod 600 {path}`)") from None
    if not stat.S_ISREG(st.st_mode):
        raise NoiseKeyError(f"noise key {path} is not a regular file")
    if st.st_mode & 0o077:
        raise NoiseKeyError(f"noise key {path} is accessible to group or others (mode "
                            f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}")
    text = path.read_text(errors="replace").strip()
    if len(text) != 2 * KEY_BYTES or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise NoiseKeyError(f"noise key {path} must hold {2 * KEY_BYTES} hexadecimal characters "
                            f"(`openssl rand -hex 32`), got {len(text)} characters")
    return bytes.fromhex(text)


def key_fingerprint(key: bytes) -> str:
    """16 hex characters that identify a key without revealing it or any noise it makes."""
    return hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


def cell_identity(**fields) -> dict:
    """A canonical cell identity: epsilons as floats ('inf' allowed), everything else as is."""
    out = {}
    for k, v in fields.items():
        if k == "epsilon":
            v = float(v)
            v = "inf" if math.isinf(v) else repr(v)
        out[k] = v
    return out


# ---------------------------------------------------------------- sources

class NoiseSource:
    """Generators for one cell's privacy noise, and what the ledger may say about them.

    ``numpy_rng(purpose)`` and ``torch_generator(purpose)`` give independent streams per
    purpose (e.g. ``"gaussian"`` and ``"poisson"`` for DP-SGD). ``ledger()`` is the part of a
    ledger entry that describes the source; it never contains a seed.
    """

    kind = "abstract"
    private = True

    def _material(self, purpose: str) -> bytes:  # 32 bytes
        raise NotImplementedError

    def numpy_rng(self, purpose: str = "gaussian") -> np.random.Generator:
        return np.random.Generator(np.random.PCG64DXSM(int.from_bytes(self._material(purpose), "big")))

    def torch_generator(self, purpose: str = "gaussian", device="cpu"):
        import torch

        seed = int.from_bytes(self._material(purpose)[:8], "big")
        return torch.Generator(device=device).manual_seed(seed)

    @property
    def secure_mode(self) -> bool:
        """Whether opacus should use its floating-point-attack mitigation for this source."""
        return False

    def ledger(self) -> dict:
        return {"noise_source": self.kind}


class KeyedNoise(NoiseSource):
    """Noise derived from a secret key and the cell identity (see the module docstring)."""

    kind = "keyed"

    def __init__(self, key: bytes, identity: dict):
        if len(key) != KEY_BYTES:
            raise NoiseKeyError(f"a noise key has {KEY_BYTES} bytes, got {len(key)}")
        self._key = bytes(key)
        self._identity = json.dumps(identity, sort_keys=True, separators=(",", ":"))

    def _material(self, purpose: str) -> bytes:
        msg = _LABEL + self._identity.encode() + b"\x00" + purpose.encode()
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def ledger(self) -> dict:
        return {"noise_source": self.kind, "key_fingerprint": key_fingerprint(self._key)}

    def __repr__(self) -> str:  # never show the key
        return f"KeyedNoise(key={key_fingerprint(self._key)}, identity={self._identity})"


class SecureNoise(NoiseSource):
    """Fresh OS entropy for every generator it makes: never reproducible."""

    kind = "secure"

    def _material(self, purpose: str) -> bytes:
        return secrets.token_bytes(32)

    @property
    def secure_mode(self) -> bool:
        return True


class PublicSeedNoise(NoiseSource):
    """UNIT TESTS AND AUDITS ONLY: noise from a seed given in the clear; NOT private.

    Anyone who knows the seed can recompute and subtract the noise, so every ledger entry
    made with it says ``private: false``. No pipeline configuration can select it.
    """

    kind = "public_seed"
    private = False

    def __init__(self, seed: int):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)

    def _material(self, purpose: str) -> bytes:
        return hashlib.sha256(_LABEL + f"{self.seed}\x00{purpose}".encode()).digest()

    def ledger(self) -> dict:
        return {"noise_source": "public_seed (NOT private: the noise follows from a public seed)"}


def noise_source(kind: str, key_file: str | os.PathLike | None, identity: dict) -> NoiseSource:
    """The source a pipeline stage uses for one cell (``privacy.noise``, the key file)."""
    if kind == "keyed":
        if key_file is None:
            raise NoiseKeyError("privacy.noise=keyed needs a key file (--key)")
        return KeyedNoise(load_key(key_file), identity)
    if kind == "secure":
        return SecureNoise()
    raise NoiseKeyError(f"privacy.noise must be one of {NOISE_SOURCES}, got {kind!r}")


def main(argv: list[str] | None = None) -> int:
    """``python -m dpdeepsets.noise new-key PATH`` (keeps an existing key) / ``fingerprint PATH``."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) == 2 and args[0] == "new-key":
            existed = Path(args[1]).exists()
            create_key(args[1])
            key = load_key(args[1])
            print(f"{'kept existing' if existed else 'created'} noise key {args[1]} "
                  f"(fingerprint {key_fingerprint(key)})")
            return 0
        if len(args) == 2 and args[0] == "fingerprint":
            print(key_fingerprint(load_key(args[1])))
            return 0
    except NoiseKeyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("usage: python -m dpdeepsets.noise {new-key,fingerprint} PATH", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
