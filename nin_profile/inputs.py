"""What a model is profiled on: one example's input, its shape and kind (float values, or the
integer token ids an embedding looks up). The synthetic batch itself is made by
`training.make_batch`; values matter to neither memory nor FLOPs. No torch here: a profile
(results.RunConfig) is read and rendered without it; the user's sizes are checked where they
are given (the CLI's parser, `api.profile`, `api.input_fields`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputSpec:
    """One example of a model's input, without the batch dimension.

    shape: channels × side × side for the images the built-in models take; any shape for a
    user's model (a sequence of 512 tokens is (512,), 100 steps of 40 features (100, 40)).
    token_ids: int64 ids below the model's smallest embedding vocabulary (`nn.Embedding`'s
    `num_embeddings`), never cast to a lower precision; else float values in the run's dtype.
    batch_dim: where the batch goes in the model's input: 0, first (what nearly every model
    takes); 1 for a time-first recurrent model (`batch_first=False`), which takes (time, batch,
    features).
    """

    shape: tuple[int, ...]
    token_ids: bool = False
    batch_dim: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))  # a list from JSON

    @classmethod
    def image(cls, channels: int, side: int) -> InputSpec:
        return cls((channels, side, side))

    @property
    def square_image(self) -> tuple[int, int] | None:
        """(channels, side) where the input is float channels × side × side, batch first;
        else None."""
        if self.token_ids or len(self.shape) != 3 or self.shape[1] != self.shape[2]:
            return None
        if self.batch_dim:
            return None
        return self.shape[0], self.shape[1]

    @property
    def token_steps(self) -> int | None:
        """The tokens of one example where the input is one sequence of token ids (its
        length): what a language model scores one by one. None for other inputs."""
        return self.shape[0] if self.token_ids and len(self.shape) == 1 else None

    def batch_shape(self, batch: int) -> tuple[int, ...]:
        return (*self.shape[: self.batch_dim], batch, *self.shape[self.batch_dim :])

    def describe(self) -> str:
        """In words, e.g. "1×224×224 images", "512 token ids", "100×40 values" (per example)."""
        sizes = "×".join(map(str, self.shape))
        if self.token_ids:
            return f"{sizes} token ids"
        return (
            f"{sizes} images" if len(self.shape) == 3 and not self.batch_dim else f"{sizes} values"
        )

    @property
    def batch_place(self) -> str:
        """Where the batch goes, in words, where it is not first ("" where it is)."""
        return f"the batch in dim {self.batch_dim} of the input" if self.batch_dim else ""


IMAGES_224 = InputSpec((1, 224, 224))  # the built-in models' default: 1×224×224 images
