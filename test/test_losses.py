"""The objective's terms on cases whose answer is known, and each optional flag."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sfm_ros.models.warp import inverse_warp, pose_vec_to_mat
from test.conftest import REPO
from training.config import load_train_config
from training.losses import (
    LossConfig,
    explainability_regularisation,
    photometric_error,
    second_order_smoothness,
    sfm_objective,
    ssim_dissimilarity,
)
from training.normalisation import normalise

H, W = 32, 96
K = torch.tensor([[[60.0, 0.0, 47.5], [0.0, 60.0, 15.5], [0.0, 0.0, 1.0]]])


def textured(shift: float = 0.0) -> torch.Tensor:
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    u = u + shift
    return torch.stack([torch.sin(0.3 * u) * torch.cos(0.2 * v), torch.cos(0.25 * u + 0.3 * v),
                        torch.sin(0.1 * u + 0.05 * v)])[None]


def scene(depth_m: float = 6.0, tx: float = 0.1) -> dict:
    """A fronto-parallel plane seen by the target and two sources; T_source_target translations -tx and +tx.

    With translation t, a target pixel u lands at u + f t / Z in the source, so source(u) = I(u - f t / Z).
    """
    target = textured()
    poses = torch.tensor([[[-tx, 0, 0, 0, 0, 0], [tx, 0, 0, 0, 0, 0]]])
    sources = torch.stack([textured(60 * tx / depth_m), textured(-60 * tx / depth_m)], dim=1)
    disparities = tuple(torch.full((1, 1, H // 2**s, W // 2**s), 1.0 / depth_m) for s in range(4))
    return {"target": target, "sources": sources, "poses": poses, "disparities": disparities, "K": K}


def run(config: LossConfig, masks: tuple = (), **overrides: object) -> tuple[torch.Tensor, dict]:
    inputs = {**scene(), **overrides}
    return sfm_objective(inputs["target"], inputs["sources"], inputs["disparities"], inputs["poses"], masks,
                         inputs["K"], config)


def test_the_paper_preset_is_the_papers_objective() -> None:
    config = load_train_config(str(REPO / "config" / "train_paper.yaml")).loss
    assert (config.num_scales, config.smooth_weight, config.smooth_decay, config.explain_weight) == (4, 0.5, 2.0, 0.2)
    assert (config.smoothness_target, config.ssim_weight) == ("disparity", 0.0)
    assert not (config.min_over_sources or config.validity_mask or config.full_resolution)
    assert config.validity_mean == "in_view"


def constant_scene(values: tuple[float, float] = (0.3, 0.5), height: int = 16, width: int = 32) -> dict:
    """Target 0 everywhere, source i = values[i] everywhere, zero motion: every warp is the identity, so the error of
    source i is values[i] at every pixel of every scale (area pooling keeps constants)."""
    K_here = torch.tensor([[[20.0, 0.0, (width - 1) / 2], [0.0, 20.0, (height - 1) / 2], [0.0, 0.0, 1.0]]])
    sources = torch.stack([torch.full((1, 3, height, width), v) for v in values], dim=1)
    disparities = tuple(torch.full((1, 1, height // 2**s, width // 2**s), 0.2) for s in range(4))
    return {"target": torch.zeros(1, 3, height, width), "sources": sources, "poses": torch.zeros(1, 2, 6),
            "disparities": disparities, "K": K_here}


def test_photometric_term_is_summed_over_sources_and_scales() -> None:
    # Per scale 0.3 + 0.5 = 0.8; four scales: 3.2 (an average over sources or scales would give 1.6, 0.8 or 0.4).
    _, terms = run(LossConfig(explain_weight=0.0), **constant_scene())
    assert float(terms["photometric"]) == pytest.approx(3.2, rel=1e-5)
    _, two_scales = run(LossConfig(explain_weight=0.0, num_scales=2), **constant_scene())
    assert float(two_scales["photometric"]) == pytest.approx(1.6, rel=1e-5)


def test_explainability_weights_each_pixel_of_its_own_source() -> None:
    inputs = constant_scene()
    # Source 0: mask 0.25 everywhere; source 1: 0.75. Per scale 0.25 x 0.3 + 0.75 x 0.5 = 0.45; four scales: 1.8.
    masks = tuple(torch.stack([torch.full((16 // 2**s, 32 // 2**s), 0.25), torch.full((16 // 2**s, 32 // 2**s),
                                                                                      0.75)])[None]
                  for s in range(4))
    _, terms = run(LossConfig(explain_weight=0.2), masks, **inputs)
    assert float(terms["photometric"]) == pytest.approx(1.8, rel=1e-5)
    # Per pixel, not mean(mask) x mean(error): source 0 errs 0.3 on the left half and 0.9 on the right, its mask is
    # 1 on the left and 0 on the right -> (0.3 x 1 + 0.9 x 0) / 2 = 0.15 (0.5 x 0.6 = 0.3 if weighted by means).
    source = inputs["sources"].clone()
    source[:, 0, :, :, 16:] = 0.9
    halves = torch.zeros(1, 2, 16, 32)
    halves[:, 0, :, :16] = 1.0
    _, per_pixel = run(LossConfig(explain_weight=0.2, num_scales=1), (halves,), **{**inputs, "sources": source})
    assert float(per_pixel["photometric"]) == pytest.approx(0.15, rel=1e-5)


def test_full_resolution_synthesises_every_scale_at_the_input_size() -> None:
    # Zero motion, target 0, source 0 a +-1 checkerboard and source 1 zero: at the input size source 0 errs 1 at every
    # pixel, while area-pooled to any coarser size the checkerboard is 0. Paper: 1 (scale 0 only); full size: 4 x 1.
    inputs = constant_scene(values=(0.0, 0.0))
    board = ((torch.arange(16)[:, None] + torch.arange(32)[None]) % 2 * 2 - 1).float()
    inputs["sources"][:, 0] = board
    _, paper = run(LossConfig(explain_weight=0.0), **inputs)
    assert float(paper["photometric"]) == pytest.approx(1.0, rel=1e-4)
    _, full = run(LossConfig(explain_weight=0.0, full_resolution=True), **inputs)
    assert float(full["photometric"]) == pytest.approx(4.0, rel=1e-4)
    # A coarse scale's mask is upsampled with its disparity: masks 1 at scale 0 and 0.5 below -> 1 + 3 x 0.5 = 2.5;
    # the regulariser stays on the masks the network made, the same either way.
    masks = tuple(torch.full((1, 2, 16 // 2**s, 32 // 2**s), 1.0 if s == 0 else 0.5) for s in range(4))
    _, paper_masked = run(LossConfig(explain_weight=0.2), masks, **inputs)
    _, full_masked = run(LossConfig(explain_weight=0.2, full_resolution=True), masks, **inputs)
    assert float(paper_masked["photometric"]) == pytest.approx(1.0, rel=1e-4)
    assert float(full_masked["photometric"]) == pytest.approx(2.5, rel=1e-4)
    assert float(full_masked["explainability"]) == pytest.approx(float(paper_masked["explainability"]), rel=1e-6)
    assert float(full_masked["explainability"]) == pytest.approx(0.2 * 3 * 2 * np.log(2), rel=1e-5)


def test_true_depth_and_pose_beat_wrong_ones() -> None:
    config = LossConfig(explain_weight=0.0)
    _, right = run(config)
    _, zero_motion = run(config, poses=torch.zeros(1, 2, 6))
    _, inverted = run(config, poses=-scene()["poses"])
    assert float(right["photometric"]) < 0.5 * float(zero_motion["photometric"])
    assert float(right["photometric"]) < 0.5 * float(inverted["photometric"])


def test_total_is_the_sum_of_its_terms() -> None:
    masks = tuple(torch.full((1, 2, H // 2**s, W // 2**s), 0.7) for s in range(4))
    total, terms = run(LossConfig(), masks)
    assert torch.isclose(total, terms["photometric"] + terms["smoothness"] + terms["explainability"])
    # Explainability regulariser: 0.2 x mean(-log 0.7), per source and scale.
    assert float(terms["explainability"]) == pytest.approx(0.2 * 2 * 4 * -torch.log(torch.tensor(0.7)).item(),
                                                          rel=1e-5)


def test_second_order_smoothness_by_hand() -> None:
    v, u = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    # d = u v: d_xx = d_yy = 0 and d_xy = d_yx = 1 everywhere -> 0 + 1 + 1 + 0 = 2.
    assert float(second_order_smoothness((u * v)[None, None])) == pytest.approx(2.0)
    # d = 3 u^2 + v^2: d_xx = 6, d_yy = 2, mixed terms 0 -> 8; together with 0.5 u v: 8 + 0.5 + 0.5 = 9.
    assert float(second_order_smoothness((3 * u**2 + v**2)[None, None])) == pytest.approx(8.0)
    assert float(second_order_smoothness((3 * u**2 + v**2 + 0.5 * u * v)[None, None])) == pytest.approx(9.0)


def test_smoothness_is_zero_on_a_planar_disparity() -> None:
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    plane = (0.01 * u + 0.02 * v + 0.3)[None, None]
    assert float(second_order_smoothness(plane)) == pytest.approx(0.0, abs=1e-6)
    bumpy = plane + 0.1 * torch.rand_like(plane)
    assert float(second_order_smoothness(bumpy)) > 0.01


def test_smoothness_weights_decay_per_scale() -> None:
    _, flat = run(LossConfig(explain_weight=0))
    assert float(flat["smoothness"]) == pytest.approx(0.0, abs=1e-6)
    # Disparity u v at every scale has smoothness 2 (above): lambda_s (1 + 1/d + 1/d^2 + 1/d^3) x 2.
    ramps = []
    for s in range(4):
        v, u = torch.meshgrid(torch.arange(H // 2**s, dtype=torch.float32),
                              torch.arange(W // 2**s, dtype=torch.float32), indexing="ij")
        ramps.append((0.01 * u * v + 0.1)[None, None])
    ramps = tuple(ramps)
    for decay in (2.0, 2.3):
        _, terms = run(LossConfig(explain_weight=0, smooth_weight=0.5, smooth_decay=decay), disparities=ramps)
        expected = 0.5 * sum(decay**-s for s in range(4)) * 2 * 0.01
        assert float(terms["smoothness"]) == pytest.approx(expected, rel=1e-4)


def test_smoothness_on_depth_smooths_the_inverse() -> None:
    # Disparity 1 / (1 + u v / 100): its depth is 1 + u v / 100, whose smoothness is 2 / 100 at every scale.
    disparities = []
    for s in range(4):
        v, u = torch.meshgrid(torch.arange(H // 2**s, dtype=torch.float32),
                              torch.arange(W // 2**s, dtype=torch.float32), indexing="ij")
        disparities.append((1.0 / (1.0 + u * v / 100))[None, None])
    _, terms = run(LossConfig(explain_weight=0, smooth_weight=1.0, smoothness_target="depth"),
                   disparities=tuple(disparities))
    assert float(terms["smoothness"]) == pytest.approx(0.02 * (1 + 1 / 2 + 1 / 4 + 1 / 8), rel=1e-4)


def test_regulariser_prevents_the_all_zero_mask() -> None:
    def optimise(weight: float) -> float:
        logit = torch.zeros((), requires_grad=True)
        optimiser = torch.optim.SGD([logit], lr=1.0)
        error = torch.tensor(0.1)
        for _ in range(300):
            mask = torch.sigmoid(logit)
            loss = error * mask + weight * explainability_regularisation(mask[None])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return float(torch.sigmoid(logit).detach())
    assert optimise(0.0) < 0.05  # without it the mask collapses to "explain nothing"
    assert optimise(0.2) > 0.9


def reference_dssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(1 - SSIM) / 2 by its definition (Wang et al. 2004; K1 0.01, K2 0.03, L 1) over 3x3 windows of the
    reflection-padded images, window by window. x, y: [H,W] in [0, 1]."""
    c1, c2 = (0.01 * 1) ** 2, (0.03 * 1) ** 2
    x_pad, y_pad = np.pad(x, 1, mode="reflect"), np.pad(y, 1, mode="reflect")
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            a, b = x_pad[i: i + 3, j: j + 3].ravel(), y_pad[i: i + 3, j: j + 3].ravel()
            mu_a, mu_b = a.mean(), b.mean()
            var_a, var_b = ((a - mu_a) ** 2).mean(), ((b - mu_b) ** 2).mean()
            cov = ((a - mu_a) * (b - mu_b)).mean()
            ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
            out[i, j] = np.clip((1 - ssim) / 2, 0, 1)
    return out


def test_ssim_matches_its_definition() -> None:
    # A 1-px checkerboard against its inverse: every 3x3 window holds 5 of one value and 4 of the other, so
    # mu = 5/9 and 4/9, var = 20/81 each, cov = -20/81 (a 5x5 window would give 13/25 and 12/25).
    board = (np.add.outer(np.arange(6), np.arange(8)) % 2).astype(np.float64)
    c1, c2 = 1e-4, 9e-4
    centre = ((40 / 81 + c1) * (-40 / 81 + c2)) / ((41 / 81 + c1) * (40 / 81 + c2))
    found = ssim_dissimilarity(torch.from_numpy(board)[None, None], torch.from_numpy(1 - board)[None, None])[0, 0]
    assert float(found[2, 3]) == pytest.approx((1 - centre) / 2, rel=1e-6)
    # Low contrast (0.5 +- 0.01), where the constants dominate, and random images: window by window.
    rng = np.random.default_rng(3)
    for x, y in [(0.5 + 0.01 * board, 0.5 + 0.01 * rng.random((6, 8))), (rng.random((7, 9)), rng.random((7, 9)))]:
        found = ssim_dissimilarity(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None])[0, 0]
        np.testing.assert_allclose(found.numpy(), reference_dssim(x, y), atol=1e-9)


def test_ssim_sees_the_images_in_0_1_whatever_the_normalisation() -> None:
    rng = np.random.default_rng(4)
    a, b = (rng.integers(0, 256, (3, 6, 8), dtype=np.uint8) for _ in range(2))
    mixed = photometric_error(normalise(torch.from_numpy(a))[None], normalise(torch.from_numpy(b))[None],
                              ssim_weight=1.0)[0, 0]
    expected = np.mean([reference_dssim(a[c] / 255.0, b[c] / 255.0) for c in range(3)], axis=0)
    np.testing.assert_allclose(mixed.numpy(), expected, atol=1e-5)


def test_ssim_of_identical_images_is_zero_and_mix_changes_the_loss() -> None:
    image = textured()
    assert float(ssim_dissimilarity(image, image).max()) == pytest.approx(0.0, abs=1e-6)
    assert float(ssim_dissimilarity(image, textured(3.0)).mean()) > 0.05
    l1 = photometric_error(image, textured(3.0))
    mixed = photometric_error(image, textured(3.0), ssim_weight=0.85)
    assert not torch.allclose(l1, mixed)
    _, plain = run(LossConfig(explain_weight=0), poses=torch.zeros(1, 2, 6))
    _, with_ssim = run(LossConfig(explain_weight=0, ssim_weight=0.85), poses=torch.zeros(1, 2, 6))
    assert float(plain["photometric"]) != pytest.approx(float(with_ssim["photometric"]))


def test_min_over_sources_never_exceeds_the_sum() -> None:
    wrong = torch.tensor([[[-0.1, 0, 0, 0, 0, 0], [-0.3, 0, 0, 0, 0, 0]]])  # source 0 right, source 1 wrong
    _, summed = run(LossConfig(explain_weight=0), poses=wrong)
    _, minimum = run(LossConfig(explain_weight=0, min_over_sources=True), poses=wrong)
    assert float(minimum["photometric"]) < 0.5 * float(summed["photometric"])


def test_out_of_view_samples_read_the_border_pixel() -> None:
    """A uniform grey scene shifted by 20 px: every sample, in view or not, reads the same grey when out-of-view
    samples repeat the border (the authors' sampler), so nothing costs; zero padding would charge the grey's size."""
    grey = torch.full((1, 3, H, W), 0.5)
    far = scene(tx=2.0)
    _, terms = run(LossConfig(explain_weight=0, validity_mask=False), target=grey, disparities=far["disparities"],
                   poses=far["poses"], sources=grey[:, None].expand(1, 2, 3, H, W).contiguous())
    assert float(terms["photometric"]) == pytest.approx(0.0, abs=1e-7)


def test_validity_mask_drops_out_of_view_pixels() -> None:
    far = scene(tx=2.0)  # a 20 px shift: a band of each source falls outside the image
    depth = torch.full((1, 1, H, W), 6.0)
    _, valid = inverse_warp(textured(), depth, pose_vec_to_mat(far["poses"][:, 1]), K)
    assert 0.1 < float(1 - valid.mean()) < 0.5
    _, counted = run(LossConfig(explain_weight=0, num_scales=1, validity_mask=False), **far)
    _, masked = run(LossConfig(explain_weight=0, num_scales=1, validity_mask=True, validity_mean="in_view"), **far)
    # Without the flag out-of-view pixels count (against the border pixel they read); with it only the (here perfect)
    # in-view ones do.
    assert float(masked["photometric"]) < 0.05 * float(counted["photometric"])


def test_validity_mean_over_all_pixels_charges_nothing_for_leaving_the_view() -> None:
    """constant_scene: depth 1 / 0.2 = 5, fx 20. Source 0 moved 1 unit sideways shifts every pixel by 20 x 1 / 5 = 4
    columns, so 4 of the 32 leave the view; source 1 stays. Every in-view pixel of source i errs by values[i]."""
    inputs = constant_scene()
    inputs["poses"] = torch.tensor([[[1.0, 0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0, 0]]])
    config = LossConfig(explain_weight=0, num_scales=1, smooth_weight=0.0, validity_mask=True, validity_mean="in_view")

    def photometric(loss_config: LossConfig) -> float:
        return float(sfm_objective(inputs["target"], inputs["sources"], inputs["disparities"], inputs["poses"], (),
                                   inputs["K"], loss_config)[1]["photometric"])

    assert photometric(config) == pytest.approx(0.3 + 0.5, abs=1e-6)  # the mean over the 28 in-view columns
    assert photometric(dataclasses.replace(config, validity_mean="all")) == pytest.approx(0.3 * 28 / 32 + 0.5,
                                                                                          abs=1e-6)
    with pytest.raises(ValueError, match="validity_mean"):
        dataclasses.replace(config, validity_mean="valid")


def test_bad_flags_are_refused() -> None:
    with pytest.raises(ValueError, match="smoothness_target"):
        LossConfig(smoothness_target="third_order")
    with pytest.raises(ValueError, match="ssim_weight"):
        dataclasses.replace(LossConfig(), ssim_weight=2.0)
