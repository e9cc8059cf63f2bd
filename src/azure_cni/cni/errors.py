"""CNI error codes and the typed errors the agent raises; each carries its code.

The shim (stdlib only, one file) keeps its own copy of the codes it produces itself; a unit
test keeps the two in agreement.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """Error codes from the CNI spec (section 5), and ours from 100 up."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODING_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    LIMITED_CONNECTIVITY = 51
    #: CHECK found the pod's interface, address or routes different from what ADD built
    DATAPATH_MISMATCH = 100
    INTERNAL = 999


class CniError(Exception):
    """An error the runtime sees as a CNI error object."""

    code: Code = Code.INTERNAL

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


class IncompatibleVersion(CniError):
    code = Code.INCOMPATIBLE_VERSION


class UnknownContainer(CniError):
    code = Code.UNKNOWN_CONTAINER


class InvalidEnvironment(CniError):
    code = Code.INVALID_ENVIRONMENT


class DecodingFailure(CniError):
    code = Code.DECODING_FAILURE


class InvalidConfig(CniError):
    code = Code.INVALID_CONFIG


class TryAgainLater(CniError):
    code = Code.TRY_AGAIN_LATER


class NotAvailable(CniError):
    code = Code.NOT_AVAILABLE


class LimitedConnectivity(CniError):
    code = Code.LIMITED_CONNECTIVITY


class DatapathMismatch(CniError):
    code = Code.DATAPATH_MISMATCH
