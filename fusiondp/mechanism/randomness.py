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


def os_entropy_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` whose whole state comes from OS entropy (never recorded)."""
    device = torch.device(device)
    if device.type != "cpu":
        return torch.Generator(device=device).manual_seed(secrets.randbits(64))
    generator = torch.Generator().manual_seed(0)  # a valid state with no cached normal sample
    state = bytearray(generator.get_state().numpy().tobytes())
    words = np.frombuffer(secrets.token_bytes(4 * _MT_WORDS), dtype="<u4").astype("<u8")
    words[0] |= 0x80000000  # MT19937 needs a non-zero state; its top bit alone makes it so
    # left = 1: the first draw twists the random words (the Mersenne Twister's own tempering follows)
    _HEADER.pack_into(state, 0, 0, 1, 1, 0)
    start = _HEADER.size
    state[start : start + 8 * _MT_WORDS] = words.tobytes()
    generator.set_state(torch.tensor(list(state), dtype=torch.uint8))
    check = generator.get_state().numpy().tobytes()[start : start + 8 * _MT_WORDS]
    if check != words.tobytes():  # a torch whose state layout differs: refuse rather than weaken
        raise RuntimeError(
            "this torch version's CPU generator state has another layout; os_entropy_generator cannot fill "
            "it from OS entropy. Update fusiondp.mechanism.randomness for it."
        )
    return generator
