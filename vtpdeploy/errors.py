"""Error types. Every user-facing failure is a `VtpError` whose message fits on one line."""


class VtpError(Exception):
    """Base class: the CLI prints `error: <message>` and exits 2."""

    exit_code = 2


class UnsupportedModelError(VtpError):
    """The model is not a timm VisionTransformer / Eva layout that VTP gates can be placed in."""


class RecipeError(VtpError):
    """The recipe (or a --set override) is malformed or names an unknown key."""


class DataError(VtpError):
    """A dataset or calibration folder is missing, empty or of the wrong shape."""


class CheckpointError(VtpError):
    """A checkpoint or saved model is missing, corrupt, unsafe or does not fit the model."""


class PlanError(VtpError):
    """A prune plan is invalid or does not fit the model."""


class NumericalMismatchError(VtpError):
    """A transform changed the model's outputs beyond the allowed tolerance."""

    def __init__(self, what: str, max_diff: float, atol: float):
        self.max_diff = max_diff
        self.atol = atol
        super().__init__(f"{what}: max |diff| {max_diff:.3e} exceeds tolerance {atol:.1e}")


class RunLockedError(VtpError):
    """Another pipeline holds the run directory."""


class BackendUnavailableError(VtpError):
    """A requested runtime (TensorRT, OpenVINO, ...) is not installed."""
