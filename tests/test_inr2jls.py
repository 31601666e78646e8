"""INR2JLS (``JointLatentClassifier``, ``RunSpec.jls``): invariance of the weights' branch, images used in training
only, the loss's terms, and errors on settings it cannot serve."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tasks.weight_space.batching import Batcher, Normalizer
from tasks.weight_space.synthetic import synthetic_cnn_zoo, synthetic_inr_zoo
from tasks.weight_space.task_models import JointLatentClassifier, ProbeFeatures, build_features
from tasks.weight_space.task_runs import (_Task, build_model, cnn_task_data, default_spec, inr_task_data,
                                          record_path, run)
from tests.test_weight_space_tasks import ATOL, _double_batch, _siren_table, rgb_zoo  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def zoo():
    return synthetic_inr_zoo(n_train=12, n_val=4, n_test=4, hidden=(6, 6), side=8)


@pytest.mark.parametrize("outputs", [1, 3], ids=["gray", "rgb"])
@pytest.mark.parametrize("name", ["dng", "ng-gnn"])
def test_weight_branch_is_invariant_to_hidden_permutations(name, outputs):
    template, table, _ = _siren_table(outputs=outputs)
    batcher = Batcher(table, Normalizer(table))
    torch.manual_seed(0)
    feats = build_features(name, kmax=1, n_outputs=outputs, flat_dim=table.flat.shape[1],
                           stat_dim=batcher.stats.shape[1], hidden=16, depth=2, baseline_hidden=32,
                           probes=ProbeFeatures(template, table.graphs[0], 5))
    model = JointLatentClassifier(feats, 10, outputs, (8, 8), latent=16, head_hidden=16).double().eval()
    out = model(_double_batch(batcher, range(6)))
    for key in ("logits", "recon", "z"):
        torch.testing.assert_close(out[key][3:], out[key][:3], atol=ATOL, rtol=0)
    assert not torch.allclose(out["logits"][0], out["logits"][1])
    assert out["recon"].shape == (6, outputs * 64) and "image_logits" not in out
    # the latent has a fixed scale (layer norm without affine parameters): mean 0, variance 1 per row
    torch.testing.assert_close(out["z"].mean(1), torch.zeros(6, dtype=torch.float64), atol=1e-9, rtol=0)


def test_images_enter_training_only_and_every_branch_learns(zoo):
    data = inr_task_data(zoo, "classify")
    spec = default_spec("classify", "synthetic", "dng", epochs=1, batch_size=4, probes=3, hidden=8, depth=1, jls=True)
    batcher = Batcher(data.train.table, Normalizer(data.train.table))
    model = build_model(spec, data, batcher)
    assert isinstance(model, JointLatentClassifier)
    task, batch = _Task(spec, data), batcher.make(torch.arange(4))
    model.train()
    loss, _ = task.loss(model, batch, data.train)
    loss.backward()
    for part in (model.features, model.weight_to_latent, model.image_to_latent, model.head, model.decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part
    # evaluation: the predictions come from the weights alone, so other images change nothing
    model.eval()
    with torch.no_grad():
        _, before = task.loss(model, batch, data.train)
        data.train.images.mul_(0.0)
        _, after = task.loss(model, batch, data.train)
    torch.testing.assert_close(before["logits"], after["logits"], atol=0, rtol=0)


@pytest.mark.parametrize("align", [1.0, 4.0])
def test_training_loss_is_the_sum_of_its_five_terms(zoo, align):
    """Cross-entropy and reconstruction from both latents, weight 1, plus ``jls_align`` x the latents' MSE."""
    data = inr_task_data(zoo, "classify")
    spec = default_spec("classify", "synthetic", "dng", epochs=1, batch_size=4, probes=3, hidden=8, depth=1, jls=True,
                        jls_align=align)
    assert spec.label.endswith("+jls" if align == 1.0 else "+jls+align4")
    batcher = Batcher(data.train.table, Normalizer(data.train.table))
    model = build_model(spec, data, batcher).train()
    batch, idx = batcher.make(torch.arange(4)), torch.arange(4)
    torch.manual_seed(1)
    loss, _ = _Task(spec, data).loss(model, batch, data.train)
    torch.manual_seed(1)
    out = model(batch, data.train.images[idx])
    y, img = data.train.labels[idx], data.train.images[idx].flatten(1)
    expected = (F.cross_entropy(out["logits"], y) + F.mse_loss(out["recon"], img)
                + F.cross_entropy(out["image_logits"], y) + F.mse_loss(out["image_recon"], img)
                + align * F.mse_loss(out["z"], out["image_z"]))
    torch.testing.assert_close(loss, expected)


def test_distill_variant_stops_the_alignment_at_the_image_latent(zoo):
    """With ``jls_distill`` the alignment term moves the weights' branch only; the image branch gets the same
    gradient as without the alignment (its own cross-entropy and reconstruction)."""
    data = inr_task_data(zoo, "classify")
    grads = {}
    for distill in (False, True):
        spec = default_spec("classify", "synthetic", "dng", epochs=1, batch_size=4, probes=3, hidden=8, depth=1,
                            jls=True, jls_distill=distill)
        assert spec.label.endswith("+jlsd" if distill else "+jls")
        batcher = Batcher(data.train.table, Normalizer(data.train.table))
        torch.manual_seed(0)
        model = build_model(spec, data, batcher).train()
        _Task(spec, data).loss(model, batcher.make(torch.arange(4)), data.train)[0].backward()
        grads[distill] = [p.grad.clone() for p in model.image_to_latent.parameters()]
        # the image branch's gradient without the alignment term, from the same model
        model.zero_grad()
        idx = torch.arange(4)
        out = model(batcher.make(idx), data.train.images[idx])
        y, img = data.train.labels[idx], data.train.images[idx].flatten(1)
        (F.cross_entropy(out["image_logits"], y) + F.mse_loss(out["image_recon"], img)).backward()
        own = [p.grad for p in model.image_to_latent.parameters()]
        same = all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads[distill], own))
        assert same == distill
    with pytest.raises(ValueError, match="set jls=True"):
        default_spec("classify", "mnist", "dng", jls_distill=True)


def test_jls_run_end_to_end_on_rgb_inrs(tmp_path, rgb_zoo):
    data = inr_task_data(rgb_zoo, "classify")
    assert data.train.images.shape[1:] == (3, 32, 32)
    spec = default_spec("classify", "cifar10", "dng", epochs=2, batch_size=4, probes=3, hidden=8, depth=1, jls=True)
    rec = run(spec, data=data, out_dir=tmp_path, progress=False, log=None)
    assert record_path(tmp_path, spec).name == "classify-cifar10-dng+h8d1+probe3+jls-s0.json"
    assert rec["config"]["jls"] is True and rec["epochs"] == 2 and math.isfinite(rec["history"][-1]["train_loss"])
    assert 0 <= rec["metrics"]["accuracy"] <= 1


def test_jls_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="INR classification objective"):
        default_spec("edit", "mnist", "dng", jls=True)
    with pytest.raises(ValueError, match="own reconstruction loss"):
        default_spec("classify", "mnist", "dng", jls=True, aux_recon=1.0)
    with pytest.raises(ValueError, match="set jls=True"):
        default_spec("classify", "mnist", "dng", jls_align=4.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="jls_align must be a finite weight > 0"):
            default_spec("classify", "mnist", "dng", jls=True, jls_align=bad)
    data = cnn_task_data(synthetic_cnn_zoo(n_archs=2, per_arch=4, seed=3))
    spec = default_spec("generalization", "cifar10", "dng")
    spec.task, spec.jls = "classify", True  # past the spec's own checks: the data must still refuse it
    with pytest.raises(ValueError, match="needs an INR zoo"):
        build_model(spec, data, Batcher(data.train.table, Normalizer(data.train.table)))
    with pytest.raises(ValueError, match="images must be"):
        template, table, _ = _siren_table()
        feats = build_features("dng", kmax=1, n_outputs=1, flat_dim=table.flat.shape[1], stat_dim=1, hidden=8,
                               depth=1, baseline_hidden=8)
        model = JointLatentClassifier(feats, 10, 1, (8, 8), latent=8)
        model(Batcher(table, Normalizer(table)).make(torch.arange(2)), torch.zeros(2, 3, 8, 8))
