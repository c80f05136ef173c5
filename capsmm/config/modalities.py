"""The modalities a multimodal run config knows: each registers its own sections.

A modality package (``modalities.image``, ``modalities.audio``, or a plugin of your own) calls
:func:`register_modality` when it is imported; a multimodal run config then has a data section
``<name>`` and an encoder section ``<name>_model`` for it, with the keys and checks of the classes it
registered. So the core schema names no modality, and a new one needs no change here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry


@dataclass(frozen=True)
class ModalitySections:
    """A modality's two sections: their dataclasses and the defaults a multimodal run starts from."""

    data: type
    """the data section (``<name>.*``): a dataclass with ``validate(prefix)``"""
    encoder: type
    """the encoder section (``<name>_model.*``): an :class:`~capsmm.config.sections.EncoderConfig` or a subclass"""
    data_defaults: dict[str, Any] = field(default_factory=dict)
    encoder_defaults: dict[str, Any] = field(default_factory=dict)
    encoder_data_keys: tuple[str, ...] = ()
    """keys of the data section that the encoder builder also takes when it accepts them (audio: the
    sample rate its front end computes features at)"""

    def new_data(self) -> Any:
        return self.data(**self.data_defaults)

    def new_encoder(self) -> Any:
        return self.encoder(**self.encoder_defaults)


#: modality name -> its sections; filled by the modality packages (capsmm's plugins) when imported
MODALITY_SECTIONS: Registry[ModalitySections] = Registry("modality")


def register_modality(name: str, *, data: type, encoder: type, data_defaults: dict[str, Any] | None = None,
                      encoder_defaults: dict[str, Any] | None = None, encoder_data_keys: tuple[str, ...] = ()) -> None:
    """Give multimodal run configs the sections ``name`` and ``name_model`` (a second registration is an error)."""
    MODALITY_SECTIONS.register(name)(ModalitySections(data, encoder, dict(data_defaults or {}), dict(encoder_defaults or {}),
                                                      tuple(encoder_data_keys)))
