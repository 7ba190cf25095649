#!/usr/bin/env python
"""Compute spent on ONE private set: DP-DeepSets (embed + release + generate) vs DP-SGD.

Both are measured in this one process, on the same thread count, on a private set of
``subsets.set_size`` images of the configured shape:

* DP-DeepSets: the public-only encoder + projection on the set's images (``embedder``
  section), the DP release (clip, mean, analytic-Gaussian noise), and one hypernetwork
  forward pass that emits the LoRA (``hypernet`` / ``lora`` sections) plus writing it as a
  PEFT adapter;
* DP-SGD: ``dpdeepsets.baselines.fit_lora`` (method dpsgd) with the ``baselines`` section
  (opacus, exact functorch per-sample gradients, accountant calibration included).

Weights are random where they would come from earlier stages (the cost does not depend on
their values); the images are random uint8 of the configured size. Model construction and
loading are timed separately from the compute. The printed ratio is DP-SGD / DP-DeepSets.

    python benchmarks/private_cost.py [--configfile config/config.yaml] [--threads 1] [--epsilon 1]
"""

import argparse
import copy
import tempfile
import time
import warnings

import numpy as np
import torch

from _header import print_log_header  # benchmarks/_header.py: command, commit, date


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=3, help="DP-DeepSets repetitions (the fastest is kept)")
    args = p.parse_args()
    print_log_header(__file__)
    torch.set_num_threads(args.threads)
    from dpdeepsets import baselines as D
    from dpdeepsets import methods as M
    from dpdeepsets import noise as N
    from dpdeepsets import hypernet as H
    from dpdeepsets import lora as L
    from dpdeepsets import privacy
    from dpdeepsets.config import load_config
    from dpdeepsets.diffusion import base_from_config
    from dpdeepsets.embedder import Projection, features_from_config

    cfg = load_config(args.configfile)
    b, lc, data, emb_cfg = cfg["base"], cfg["lora"], cfg["data"], cfg["embedder"]
    hc, priv, bl = cfg["hypernet"], cfg["privacy"], cfg["baselines"]
    n, size = cfg["subsets"]["set_size"], data["image_size"]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, size, size, 1), dtype=np.uint8)

    torch.manual_seed(0)
    (unet, sched), t_build = _timed(lambda: base_from_config(b, image_size=size, channels=1))
    targets = L.find_targets(unet, lc["target_modules"], lc["rank"])
    basis = L.make_basis(targets, lc["rank"], lc["basis_seed"])

    # --- DP-DeepSets -----------------------------------------------------------------
    feats, t_warm = _timed(lambda: features_from_config(images[:2], emb_cfg))  # loads (and caches) the encoder
    proj = Projection(rng.normal(size=feats.shape[1]), rng.normal(size=(emb_cfg["dim"], feats.shape[1])))
    net = H.HyperNet(emb_cfg["dim"], targets, lc["rank"], clip_norm=priv["clip_norm"],
                     d_model=hc["d_model"], layers=hc["layers"], heads=hc["heads"]).eval()

    def dpdeepsets_once(tmp):
        times = {}
        z, times["embed"] = _timed(lambda: proj.transform(features_from_config(images, emb_cfg)))
        (noisy, ledger), times["release"] = _timed(lambda: privacy.release_clipped_mean(
            z, epsilon=args.epsilon, delta=priv["delta"], clip_norm=priv["clip_norm"],
            adjacency=priv["adjacency"], n=n, noise=N.SecureNoise()))

        def generate():
            with torch.no_grad():
                out = net(torch.tensor(noisy[None], dtype=torch.float32),
                          torch.tensor([ledger["sigma"]], dtype=torch.float32))
            L.save_peft_adapter(f"{tmp}/adapter", targets, basis, {k: v[0] for k, v in out.items()},
                                rank=lc["rank"], alpha=lc["alpha"])
        _, times["generate"] = _timed(generate)
        return times

    with tempfile.TemporaryDirectory() as tmp:
        runs = [dpdeepsets_once(tmp) for _ in range(args.reps)]
    best = min(runs, key=lambda r: sum(r.values()))
    t_ours = sum(best.values())

    # --- DP-SGD ------------------------------------------------------------------------
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hyper = D.hyperparameters(bl, "dpsgd", args.epsilon)
        plan = D.plan_dp(hyper, n=n, epsilon=args.epsilon, delta=priv["delta"],
                         accountant=bl["accountant"], prv_max_epsilon=bl["prv_max_epsilon"])
        res, t_dpsgd = _timed(lambda: D.fit_lora(
            copy.deepcopy(unet), sched, targets, x, method=M.get("dpsgd"), hyper=hyper,
            rank=lc["rank"], alpha=lc["alpha"], parametrisation=bl["parametrisation"],
            basis=basis, dp=plan, noise=N.SecureNoise()))
    info = res.privacy

    print(f"private set: n = {n} images of {size}x{size}, epsilon = {args.epsilon:g}, "
          f"delta = {priv['delta']:g}, threads = {args.threads}")
    print(f"(one-time model construction: UNet {t_build:.2f} s, encoder load + warm-up {t_warm:.2f} s; not counted)")
    print(f"DP-DeepSets  embed {best['embed']:.3f} s + release {best['release']:.4f} s + "
          f"generate {best['generate']:.3f} s = {t_ours:.3f} s  (fastest of {args.reps})")
    print(f"DP-SGD       {info['steps']} steps of expected batch {hyper.batch_size} x "
          f"{hyper.noise_multiplicity} draws ({bl['grad_sample_mode']} per-sample gradients, "
          f"noise multiplier {info['noise_multiplier']:.3f}, accounted eps {info['accounted_epsilon']:.3f})"
          f" = {t_dpsgd:.3f} s")
    print(f"ratio DP-SGD / DP-DeepSets compute on the private set: {t_dpsgd / t_ours:.1f}x")


if __name__ == "__main__":
    main()
