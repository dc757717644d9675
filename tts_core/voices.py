"""Errors about one registered voice, shared by the registry (which raises them) and the API
(which answers 404 / 409 with them)."""

from __future__ import annotations


class VoiceIdError(Exception):
    """An error about one voice id; `args` holds only the id so it pickles back intact across Ray."""

    template: str

    def __init__(self, voice_id: str) -> None:
        super().__init__(voice_id)
        self.voice_id = voice_id

    @property
    def message(self) -> str:
        return self.template.format(voice_id=self.voice_id)

    def __str__(self) -> str:
        return self.message


class VoiceNotFoundError(VoiceIdError, KeyError):
    """No registered voice has this id (the API answers 404 voice_not_found)."""

    template = "Voice with ID '{voice_id}' not found"


class VoiceExistsError(VoiceIdError, ValueError):
    """A voice with this id is already registered (the API answers 409 voice_already_exists)."""

    template = "Voice with ID '{voice_id}' already exists"
