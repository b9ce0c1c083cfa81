"""The objective's terms on cases whose answer is known, and each optional flag."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sfm_ros.models.warp import inverse_warp, pose_vec_to_mat
from training.losses import (
    LossConfig,
    edge_aware_smoothness,
    explainability_regularisation,
    photometric_error,
    second_order_smoothness,
    sfm_objective,
    ssim_dissimilarity,
)

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


def test_defaults_are_the_papers() -> None:
    config = LossConfig()
    assert (config.num_scales, config.smooth_weight, config.explain_weight) == (4, 0.5, 0.2)
    assert config.smoothness == "second_order" and config.ssim_weight == 0.0
    assert not (config.min_over_sources or config.auto_mask or config.validity_mask)


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


def test_smoothness_is_zero_on_a_planar_disparity() -> None:
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    plane = (0.01 * u + 0.02 * v + 0.3)[None, None]
    assert float(second_order_smoothness(plane)) == pytest.approx(0.0, abs=1e-6)
    bumpy = plane + 0.1 * torch.rand_like(plane)
    assert float(second_order_smoothness(bumpy)) > 0.01


def test_smoothness_weights_halve_per_scale() -> None:
    _, flat = run(LossConfig(explain_weight=0))
    noisy = tuple(d + 0.05 * torch.rand_like(d) for d in scene()["disparities"])
    expected = sum(0.5 / 2**s * second_order_smoothness(d) for s, d in enumerate(noisy))
    _, terms = run(LossConfig(explain_weight=0), disparities=noisy)
    assert float(flat["smoothness"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["smoothness"]) == pytest.approx(float(expected), rel=1e-5)


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


def test_auto_mask_ignores_pixels_a_static_source_already_explains() -> None:
    static = scene()["target"][:, None].expand(1, 2, 3, H, W).contiguous()
    _, terms = run(LossConfig(explain_weight=0, auto_mask=True), sources=static)
    assert float(terms["photometric"]) == pytest.approx(0.0, abs=1e-6)
    _, unmasked = run(LossConfig(explain_weight=0), sources=static)
    assert float(unmasked["photometric"]) > 0.01


def test_validity_mask_drops_out_of_view_pixels() -> None:
    far = scene(tx=2.0)  # a 20 px shift: a band of each source falls outside the image
    depth = torch.full((1, 1, H, W), 6.0)
    _, valid = inverse_warp(textured(), depth, pose_vec_to_mat(far["poses"][:, 1]), K)
    assert 0.1 < float(1 - valid.mean()) < 0.5
    _, counted = run(LossConfig(explain_weight=0, num_scales=1), **far)
    _, masked = run(LossConfig(explain_weight=0, num_scales=1, validity_mask=True), **far)
    # The paper compares out-of-view pixels against zero; with the flag only the (here perfect) in-view ones count.
    assert float(masked["photometric"]) < 0.05 * float(counted["photometric"])


def test_edge_aware_smoothness_is_weaker_at_image_edges() -> None:
    disparity = torch.zeros(1, 1, H, W)
    disparity[..., W // 2:] = 1.0
    flat_image = torch.zeros(1, 3, H, W)
    edge_image = flat_image.clone()
    edge_image[..., W // 2:] = 1.0
    assert float(edge_aware_smoothness(disparity, edge_image)) < float(edge_aware_smoothness(disparity, flat_image))
    _, terms = run(LossConfig(explain_weight=0, smoothness="edge_aware"))
    assert torch.isfinite(terms["smoothness"])


def test_bad_flags_are_refused() -> None:
    with pytest.raises(ValueError, match="smoothness"):
        LossConfig(smoothness="third_order")
    with pytest.raises(ValueError, match="ssim_weight"):
        dataclasses.replace(LossConfig(), ssim_weight=2.0)
