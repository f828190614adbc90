import pytest
import torch

from ldrps_pipeline import AlignmentModule, AlignmentTrainer, PatchDiscriminator


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_reference_sizes():
    residual, plain = AlignmentModule(), AlignmentModule(variant="plain")
    # conv3x3 3->64->128->256 + conv1x1 256->3 (+ A: conv3x3 3->64, conv1x1 64->3, and k).
    assert count(plain) == 1792 + 73856 + 295168 + 771
    assert count(residual) == count(plain) + 1792 + 195 + 3
    assert 360_000 < count(residual) < 380_000
    assert residual.optimizer_weight_decay == 1e-5 and plain.optimizer_weight_decay == 0.0
    x = torch.rand(2, 3, 13, 9)
    assert residual(x).shape == x.shape and plain(x).shape == x.shape
    assert PatchDiscriminator()(x).shape == (2, 1, 2, 2)
    with pytest.raises(ValueError, match="variant"):
        AlignmentModule(variant="unet")


def test_reset_is_seeded_kaiming_with_zero_bias():
    a, b = AlignmentModule(), AlignmentModule()
    a.reset_parameters(torch.Generator().manual_seed(3))
    b.reset_parameters(torch.Generator().manual_seed(3))
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    conv = a.body[2]  # conv3x3 64->128
    expected_std = torch.nn.init.calculate_gain("leaky_relu", 0.2) / (64 * 9) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)
    assert torch.all(conv.bias == 0)
    with torch.no_grad():
        a.residual_scale.zero_()
    a.reset_parameters(torch.Generator().manual_seed(3))
    assert torch.all(a.residual_scale == 1)


def make_trainer(seed=0, adversarial=True, loss_weights=(1.0, 0.0, 0.1), compute_dtype=torch.float32, **options):
    return AlignmentTrainer(
        AlignmentModule(hidden_channels=(8, 8, 8)),
        seed=seed,
        device=torch.device("cpu"),
        f_discriminator_lr=1e-3,
        g_discriminator_lr=1e-3 if adversarial else None,
        loss_weights=loss_weights,
        compute_dtype=compute_dtype,
        **options,
    )


def test_trainer_state_is_fresh_and_seeded():
    first, again, other = make_trainer(0), make_trainer(0), make_trainer(1)
    assert torch.equal(first.aligner.body[0].weight, again.aligner.body[0].weight)
    assert not torch.equal(first.aligner.body[0].weight, other.aligner.body[0].weight)
    assert make_trainer(adversarial=False).g_discriminator is None


def test_train_step_fits_the_alignment_loss():
    trainer = make_trainer(loss_weights=(1.0, 0.0, 0.0))
    g = torch.Generator().manual_seed(0)
    estimates, degraded = torch.rand(2, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    before = trainer.aligner.body[0].weight.clone()
    losses = [trainer.train_step(estimates, degraded, cap_perceptual=False).item() for _ in range(30)]
    assert not torch.equal(before, trainer.aligner.body[0].weight)
    assert losses[-1] < losses[0]


def test_guidance_path_gives_no_parameter_gradients():
    trainer = make_trainer()
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    y = torch.rand(1, 3, 16, 16)
    aligned = trainer.align(x)
    trainer.train_residual_discriminator(x, aligned, y)
    adversarial = trainer.residual_adversarial_term(x, y)
    d_g_grads = [p.grad.clone() for p in trainer.g_discriminator.parameters()]  # from D_g's own Adam step
    # backward(), which fills .grad of every leaf the loss depends on: only x may get one.
    (((aligned - y) ** 2).mean() + adversarial).backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in trainer.aligner.parameters())
    assert all(torch.equal(p.grad, g) for p, g in zip(trainer.g_discriminator.parameters(), d_g_grads, strict=True))


def test_residual_adversarial_term_needs_the_residual_discriminator():
    x = torch.rand(1, 3, 8, 8)
    trainer = make_trainer(adversarial=False)
    with pytest.raises(RuntimeError, match="without the residual discriminator"):
        trainer.residual_adversarial_term(x, x)
    with pytest.raises(RuntimeError, match="without the residual discriminator"):
        trainer.train_residual_discriminator(x, x, x)


def test_only_training_the_residual_discriminator_steps_its_optimiser():
    trainer = make_trainer()
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(1, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    before = [p.clone() for p in trainer.g_discriminator.parameters()]
    trainer.residual_adversarial_term(x, y)
    assert all(torch.equal(p, b) for p, b in zip(trainer.g_discriminator.parameters(), before, strict=True))
    assert not trainer.g_discriminator_optimizer.state
    trainer.train_residual_discriminator(x, trainer.align(x), y)
    assert not all(torch.equal(p, b) for p, b in zip(trainer.g_discriminator.parameters(), before, strict=True))
    assert trainer.g_discriminator_optimizer.state


@pytest.mark.parametrize(("cap_perceptual", "factor"), [(False, 1.0), (True, 0.2)])
def test_perceptual_term_above_the_cap_is_scaled_while_guidance_is_on(cap_perceptual, factor):
    g = torch.Generator().manual_seed(4)
    estimates, degraded = torch.rand(2, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    distance = 5.0  # a constant perceptual distance, w_pse * 5 = 5 above the cap of 1

    def perceptual(a, b):
        return torch.full((), distance) + 0 * a.sum()

    trainer = make_trainer(
        loss_weights=(0.0, 1.0, 0.0), perceptual=perceptual, perceptual_cap=1.0, perceptual_cap_factor=0.2
    )
    assert trainer.train_step(estimates, degraded, cap_perceptual=cap_perceptual).item() == pytest.approx(
        factor * distance
    )


def test_bfloat16_autocast_trains_like_float32_with_float32_state():
    g = torch.Generator().manual_seed(1)
    estimates, degraded = torch.rand(2, 3, 16, 16, generator=g), torch.rand(1, 3, 16, 16, generator=g)
    x = torch.rand(1, 3, 16, 16, generator=g, requires_grad=True)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        trainer = make_trainer(loss_weights=(3.0, 0.0, 0.1), compute_dtype=dtype)
        losses = torch.stack([trainer.train_step(estimates, degraded, cap_perceptual=True) for _ in range(10)])
        aligned = trainer.align(x)
        trainer.train_residual_discriminator(x, aligned, degraded)
        guidance = ((aligned - degraded) ** 2).mean() + trainer.residual_adversarial_term(x, degraded)
        (grad,) = torch.autograd.grad(guidance, x)
        results[dtype] = losses, aligned.detach(), grad
        # Parameters, optimiser state, losses and f's output stay float32 whatever the compute dtype.
        assert all(p.dtype == torch.float32 for p in trainer.aligner.parameters())
        assert all(
            state.dtype == torch.float32
            for group in trainer.aligner_optimizer.state.values()
            for state in group.values()
            if torch.is_tensor(state) and state.is_floating_point()
        )
        assert losses.dtype == aligned.dtype == torch.float32
    (losses32, aligned32, grad32), (losses16, aligned16, grad16) = results.values()
    # Measured on CPU after 10 steps: losses 0.4% apart, f(x) 0.018 at most, the guidance gradient 6% (norm).
    assert torch.allclose(losses16, losses32, rtol=0.05)
    assert (aligned16 - aligned32).abs().max() < 0.05
    assert (grad16 - grad32).norm() / grad32.norm() < 0.15
    # float16 is not autocast (it would need loss scaling): the trainer keeps float32.
    assert make_trainer(compute_dtype=torch.float16).compute_dtype == torch.float32
