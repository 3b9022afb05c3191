"""Generators for the secret randomness of a released model (``--secure_rng``).

``torch.Generator().manual_seed(s)`` initialises the CPU Mersenne Twister from the low 32 bits of ``s``
only, so a run whose secret sampler and noise are seeded by one 62-bit draw has 2^32 possible streams:
anyone holding a quantity that depends on the stream and public data alone could search them all.
:func:`os_entropy_generator` fills the whole MT19937 state (624 words, 19,968 bits) from OS entropy
instead; a CUDA generator (Philox) takes its full 64-bit seed from OS entropy. Neither is a
cryptographic generator (as Opacus without ``secure_mode``); docs/privacy.md §1c.
"""

from __future__ import annotations

import secrets
import struct

import numpy as np
import torch

_MT_WORDS = 624
_HEADER = struct.Struct("<QiiQ")  # the_initial_seed, left, seeded, next (torch's CPU generator state)


def mersenne_state(words: np.ndarray) -> torch.Tensor:
    """A torch CPU generator state whose Mersenne Twister words are ``words`` (624 values < 2^32).

    The first draw twists them (``left = 1``); no cached normal sample survives. Refuses a torch whose
    state layout differs (checked by reading the state back), rather than silently weakening it.
    """
    words = np.asarray(words, dtype="<u8").copy()
    if words.shape != (_MT_WORDS,) or (words >= 2**32).any():
        raise ValueError(
            f"a Mersenne Twister state is {_MT_WORDS} words below 2^32, got shape {words.shape}."
        )
    words[0] |= 0x80000000  # MT19937 needs a non-zero state; its top bit alone makes it so
    generator = torch.Generator().manual_seed(0)  # a valid state with no cached normal sample
    state = bytearray(generator.get_state().numpy().tobytes())
    _HEADER.pack_into(state, 0, 0, 1, 1, 0)
    start = _HEADER.size
    state[start : start + 8 * _MT_WORDS] = words.tobytes()
    tensor = torch.tensor(list(state), dtype=torch.uint8)
    generator.set_state(tensor)
    if generator.get_state().numpy().tobytes()[start : start + 8 * _MT_WORDS] != words.tobytes():
        raise RuntimeError(
            "this torch version's CPU generator state has another layout; fusiondp.mechanism.randomness "
            "cannot fill it. Update it for this version."
        )
    return tensor


def os_entropy_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` whose whole state comes from OS entropy (never recorded)."""
    device = torch.device(device)
    if device.type != "cpu":
        return torch.Generator(device=device).manual_seed(secrets.randbits(64))
    generator = torch.Generator()
    words = np.frombuffer(secrets.token_bytes(4 * _MT_WORDS), dtype="<u4")
    generator.set_state(mersenne_state(words))
    return generator


def derived_state(generator: torch.Generator) -> torch.Tensor:
    """A whole CPU generator state drawn from ``generator`` (624 words of its output): a stream forked
    from a secret generator keeps all of its entropy, not the 32 bits ``manual_seed`` would keep."""
    words = torch.randint(
        0, 2**32, (_MT_WORDS,), generator=generator, dtype=torch.int64, device=generator.device
    )
    return mersenne_state(words.cpu().numpy())
