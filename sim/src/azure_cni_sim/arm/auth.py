"""Bearer-token authentication of ARM requests, with ARM's 401 codes."""

from __future__ import annotations

import time
from collections.abc import Mapping

from azure_cni_sim.armstate import ArmError
from azure_cni_sim.imds import ARM_AUDIENCES, TokenIssuer


def authenticate(headers: Mapping[str, str], tokens: TokenIssuer) -> str:
    """The principal a request's bearer token was issued to; ArmError 401 otherwise."""
    header = headers.get("Authorization", "")
    if not header:
        raise ArmError(401, "AuthenticationFailed",
                       "Authentication failed. The 'Authorization' header is missing.")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ArmError(401, "AuthenticationFailedInvalidHeader",
                       "Authentication failed. The 'Authorization' header is provided in "
                       "an invalid format.")
    issued = tokens.lookup(token.strip())
    if issued is None:
        raise ArmError(401, "InvalidAuthenticationToken", "The access token is invalid.")
    if issued.expires_on < time.time():
        raise ArmError(401, "ExpiredAuthenticationToken",
                       "The access token expiry UTC time is earlier than current UTC time.")
    if issued.audience not in ARM_AUDIENCES:
        raise ArmError(401, "InvalidAuthenticationTokenAudience",
                       f"The access token has been obtained for wrong audience or resource "
                       f"'{issued.audience}'. It should exactly match one of the allowed "
                       f"audiences {sorted(ARM_AUDIENCES)}.")
    return issued.principal


def challenge(message: str) -> str:
    """The WWW-Authenticate header ARM sends with a 401."""
    return ('Bearer authorization_uri="https://login.microsoftonline.com/common", '
            f'error="invalid_token", error_description="{message}"')
