"""The secret noise source (dpdeepsets.noise): the key file, keyed streams, what a ledger may say."""

import os
import stat

import numpy as np
import pytest

from dpdeepsets import noise as N


def test_created_key_is_owner_only_and_never_overwritten(tmp_path):
    path = tmp_path / "secret" / "noise.key"
    N.create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key = N.load_key(path)
    assert len(key) == N.KEY_BYTES
    N.create_key(path)  # a second creator keeps the first key
    assert N.load_key(path) == key
    assert not [p for p in path.parent.iterdir() if p.name != "noise.key"]  # no temp left


def test_the_workflows_existing_key_directory_is_made_owner_only(tmp_path):
    # Snakemake creates {results_dir}/.secret (0755 under the usual umask) before noise_key runs
    secret = tmp_path / "results" / ".secret"
    secret.mkdir(parents=True)
    os.chmod(secret, 0o755)
    N.create_key(secret / "noise.key")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o700


def test_a_new_key_directory_is_owner_only_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        path = N.create_key(tmp_path / "new" / "noise.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_existing_directory_of_another_name_is_left_as_it_is(tmp_path):
    shared = tmp_path / "shared"  # e.g. /tmp or a home directory holding privacy.key_file
    shared.mkdir()
    os.chmod(shared, 0o755)
    N.create_key(shared / "noise.key")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "noise.key").stat().st_mode) == 0o600


def test_two_created_keys_differ(tmp_path):
    assert N.load_key(N.create_key(tmp_path / "a")) != N.load_key(N.create_key(tmp_path / "b"))


def test_load_key_refuses_readable_malformed_and_missing(tmp_path):
    path = N.create_key(tmp_path / "k")
    os.chmod(path, 0o644)
    with pytest.raises(N.NoiseKeyError, match="chmod 600"):
        N.load_key(path)
    bad = tmp_path / "bad"
    bad.write_text("abc\n")
    os.chmod(bad, 0o600)
    with pytest.raises(N.NoiseKeyError, match="64 hexadecimal"):
        N.load_key(bad)
    with pytest.raises(N.NoiseKeyError, match="new-key"):
        N.load_key(tmp_path / "missing")


def test_keyed_streams_depend_on_key_cell_and_purpose_only():
    k1, k2 = bytes(range(32)), bytes(32)
    cell = N.cell_identity(mechanism="release_embedding", pset="p0", epsilon=1, seed=0)

    def draw(key, identity, purpose="gaussian"):
        return N.KeyedNoise(key, identity).numpy_rng(purpose).standard_normal(4)

    np.testing.assert_array_equal(draw(k1, cell), draw(k1, dict(cell)))
    assert not np.array_equal(draw(k1, cell), draw(k2, cell))
    assert not np.array_equal(draw(k1, cell), draw(k1, {**cell, "seed": 1}))
    assert not np.array_equal(draw(k1, cell), draw(k1, cell, "poisson"))
    # epsilon spellings of one number are one cell
    assert N.cell_identity(epsilon=1) == N.cell_identity(epsilon=1.0)
    t1 = N.KeyedNoise(k1, cell).torch_generator("poisson")
    t2 = N.KeyedNoise(k1, cell).torch_generator("poisson")
    import torch

    assert torch.equal(torch.rand(3, generator=t1), torch.rand(3, generator=t2))


def test_what_the_ledger_may_say():
    key = bytes(range(32))
    src = N.KeyedNoise(key, {"pset": "p0"})
    led = src.ledger()
    assert led == {"noise_source": "keyed", "key_fingerprint": N.key_fingerprint(key)}
    assert key.hex() not in repr(src) and key.hex() not in str(led)
    assert N.SecureNoise().ledger() == {"noise_source": "secure"} and N.SecureNoise().secure_mode
    assert N.PublicSeedNoise(3).private is False


def test_secure_streams_are_fresh():
    a = N.SecureNoise().numpy_rng().standard_normal(4)
    b = N.SecureNoise().numpy_rng().standard_normal(4)
    assert not np.array_equal(a, b)


def test_noise_source_from_config(tmp_path):
    key = N.create_key(tmp_path / "k")
    assert N.noise_source("keyed", key, {}).kind == "keyed"
    assert N.noise_source("secure", None, {}).kind == "secure"
    with pytest.raises(N.NoiseKeyError, match="key file"):
        N.noise_source("keyed", None, {})
    with pytest.raises(N.NoiseKeyError, match="must be one of"):
        N.noise_source("seeded", None, {})


def test_cli_new_key_and_fingerprint(tmp_path, capsys):
    path = tmp_path / "k"
    assert N.main(["new-key", str(path)]) == 0
    assert "created" in capsys.readouterr().out
    assert N.main(["fingerprint", str(path)]) == 0
    assert capsys.readouterr().out.strip() == N.key_fingerprint(N.load_key(path))
    assert N.main(["bogus"]) == 2
