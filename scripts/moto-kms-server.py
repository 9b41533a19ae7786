#!/usr/bin/env python3
"""A local KMS-compatible server for tests and benchmarks: moto's server, with the calls
where moto is looser than AWS KMS patched to behave as AWS documents.

Usage: moto-kms-server.py --port PORT [--host 127.0.0.1] [--fault decrypt-without-plaintext]

What is patched (measured against moto 5.2; see ../shared/facts.md in the design notes):
  * Sign/Verify with MessageType=DIGEST: moto hashed the digest again. Here the message is
    taken as the digest (its length must match the algorithm, as in AWS) and signed as such.
  * RSASSA_PSS_*: moto used the maximum salt length; AWS uses salt length = hash length.
  * Disabled or PendingDeletion keys: moto still signed, encrypted and decrypted with them.
    AWS refuses with DisabledException / KMSInvalidStateException; so does this server.
  * A key of the wrong usage (or a signing algorithm the key does not have): AWS answers
    InvalidKeyUsageException, moto answered ValidationException.
  * Decrypt naming a KeyId other than the ciphertext's: AWS answers IncorrectKeyException,
    moto answered AccessDeniedException.

The Rust backend implements AWS's semantics whatever the server does; this launcher only
keeps the test server from accepting what AWS would refuse. It fails at start if moto's
internals moved (a version this launcher does not know), rather than serving unpatched.
"""

import argparse
import base64
import json
import sys

try:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    from cryptography.exceptions import InvalidSignature
    from moto.core.exceptions import JsonRESTError
    from moto.kms import models, responses, utils
    from moto.kms.exceptions import ValidationException
    import moto.server
except ImportError as error:  # pragma: no cover - environment problem
    sys.exit(f"moto[server] is required (pip install 'moto[server]>=5.2,<5.3'): {error}")


class DisabledException(JsonRESTError):
    code = 400

    def __init__(self, arn):
        super().__init__("DisabledException", f"{arn} is disabled.")


class KMSInvalidStateException(JsonRESTError):
    code = 400

    def __init__(self, arn, state):
        super().__init__("KMSInvalidStateException", f"{arn} is {state}.")


class InvalidKeyUsageException(JsonRESTError):
    code = 400

    def __init__(self, message):
        super().__init__("InvalidKeyUsageException", message)


class IncorrectKeyException(JsonRESTError):
    code = 400

    def __init__(self):
        super().__init__(
            "IncorrectKeyException",
            "The key ID in the request does not identify a KMS key that can perform this operation.",
        )


HASHES = {
    "ECDSA_SHA_256": hashes.SHA256,
    "ECDSA_SHA_384": hashes.SHA384,
    "ECDSA_SHA_512": hashes.SHA512,
    "RSASSA_PSS_SHA_256": hashes.SHA256,
    "RSASSA_PSS_SHA_384": hashes.SHA384,
    "RSASSA_PSS_SHA_512": hashes.SHA512,
    "RSASSA_PKCS1_V1_5_SHA_256": hashes.SHA256,
    "RSASSA_PKCS1_V1_5_SHA_384": hashes.SHA384,
    "RSASSA_PKCS1_V1_5_SHA_512": hashes.SHA512,
}


def require(owner, name):
    if not hasattr(owner, name):
        sys.exit(f"moto internals changed: {owner.__name__}.{name} is missing; update {__file__}")
    return getattr(owner, name)


def ensure_usable(key):
    """AWS refuses cryptographic operations on a key that is not Enabled."""
    if key.key_state == "Disabled":
        raise DisabledException(key.arn)
    if key.key_state != "Enabled":
        raise KMSInvalidStateException(key.arn, key.key_state)


def ensure_usage(key, usage):
    # moto records no usage when CreateKey names none; AWS's default is ENCRYPT_DECRYPT.
    if (key.key_usage or "ENCRYPT_DECRYPT") != usage:
        raise InvalidKeyUsageException(
            f"{key.arn} key usage is {key.key_usage} which is not valid for this operation."
        )


def padding_for(algorithm):
    """PSS with salt length = hash length, as AWS KMS signs; PKCS#1 v1.5 otherwise."""
    if algorithm.startswith("RSASSA_PSS_"):
        return padding.PSS(mgf=padding.MGF1(HASHES[algorithm]()), salt_length=padding.PSS.DIGEST_LENGTH)
    return padding.PKCS1v15()


def signing_input(key, message, message_type, algorithm):
    """The key, the bytes to sign and the hash argument for `cryptography`."""
    ensure_usable(key)
    ensure_usage(key, "SIGN_VERIFY")
    if algorithm not in key.signing_algorithms:
        raise InvalidKeyUsageException(
            f"Signing algorithm {algorithm} is not valid for {key.arn} ({key.key_spec})."
        )
    hash_type = HASHES[algorithm]
    if (message_type or "RAW") == "DIGEST":
        if len(message) != hash_type.digest_size:
            raise ValidationException(
                f"Digest is invalid length for algorithm {algorithm}."
            )
        return Prehashed(hash_type())
    if message_type not in (None, "RAW"):
        raise ValidationException(f"Unsupported MessageType {message_type}")
    if len(message) > 4096:
        raise ValidationException("Message must be at most 4096 bytes; use MessageType=DIGEST.")
    return hash_type()


def private_key_of(key):
    return key.private_key.private_key


def sign(self):
    key_id = self._get_param("KeyId")
    message = self._get_param("Message") or b""
    algorithm = self._get_param("SigningAlgorithm")
    self._validate_key_id(key_id)
    if not message:
        raise ValidationException("Message must have length greater than or equal to 1")
    key = self.kms_backend.describe_key(key_id)
    hashing = signing_input(key, message, self._get_param("MessageType"), algorithm)
    private = private_key_of(key)
    if algorithm.startswith("ECDSA_"):
        signature = private.sign(message, ec.ECDSA(hashing))
    else:
        signature = private.sign(message, padding_for(algorithm), hashing)
    return json.dumps(
        {
            "KeyId": key.arn,
            "Signature": base64.b64encode(signature).decode(),
            "SigningAlgorithm": algorithm,
        }
    )


def verify(self):
    key_id = self._get_param("KeyId")
    message = self._get_param("Message") or b""
    algorithm = self._get_param("SigningAlgorithm")
    signature = base64.b64decode(self._get_param("Signature") or "")
    self._validate_key_id(key_id)
    if not message or not signature:
        raise ValidationException("Message and Signature must not be empty")
    key = self.kms_backend.describe_key(key_id)
    hashing = signing_input(key, message, self._get_param("MessageType"), algorithm)
    public = private_key_of(key).public_key()
    try:
        if algorithm.startswith("ECDSA_"):
            public.verify(signature, message, ec.ECDSA(hashing))
        else:
            public.verify(signature, message, padding_for(algorithm), hashing)
    except InvalidSignature:
        # AWS answers an invalid signature with an error, not SignatureValid=false.
        raise JsonRESTError("KMSInvalidSignatureException", "")
    return json.dumps({"KeyId": key.arn, "SignatureValid": True, "SigningAlgorithm": algorithm})


def patch():
    backend = models.KmsBackend
    original_encrypt = require(backend, "encrypt")
    original_decrypt = require(backend, "decrypt")
    original_data_key = require(backend, "generate_data_key")
    original_public_key = require(backend, "get_public_key")
    deserialize = require(utils, "_deserialize_ciphertext_blob")
    require(responses.KmsResponse, "sign")
    require(responses.KmsResponse, "verify")
    require(utils.RSAPrivateKey, "_RSAPrivateKey__padding_and_hash_algorithm")

    def symmetric_key(self, key_id):
        key = self.describe_key(key_id)
        ensure_usable(key)
        ensure_usage(key, "ENCRYPT_DECRYPT")
        return key

    def encrypt(self, key_id, plaintext, encryption_context):
        symmetric_key(self, key_id)
        return original_encrypt(self, key_id, plaintext, encryption_context)

    def generate_data_key(self, key_id, encryption_context, number_of_bytes, key_spec):
        symmetric_key(self, key_id)
        return original_data_key(self, key_id, encryption_context, number_of_bytes, key_spec)

    def decrypt(self, ciphertext_blob, encryption_context, key_id=None):
        if key_id is not None:
            try:
                sealed_by = deserialize(ciphertext_blob).key_id
            except Exception:
                sealed_by = None
            if sealed_by is not None and sealed_by != self.any_id_to_key_id(key_id):
                raise IncorrectKeyException()
        plaintext, arn = original_decrypt(self, ciphertext_blob, encryption_context, key_id)
        symmetric_key(self, arn)
        return plaintext, arn

    def get_public_key(self, key_id):
        key = self.describe_key(key_id)
        ensure_usable(key)
        return original_public_key(self, key_id)

    def rsa_padding(self, signing_algorithm):
        return padding_for(signing_algorithm), HASHES[signing_algorithm]()

    backend.encrypt = encrypt
    backend.generate_data_key = generate_data_key
    backend.decrypt = decrypt
    backend.get_public_key = get_public_key
    responses.KmsResponse.sign = sign
    responses.KmsResponse.verify = verify
    utils.RSAPrivateKey._RSAPrivateKey__padding_and_hash_algorithm = rsa_padding


def inject_decrypt_without_plaintext():
    """Fault injection for tests: Decrypt answers 200 with KeyId but no Plaintext, a
    malformed answer the client must refuse rather than read as an empty plaintext."""
    original = responses.KmsResponse.decrypt

    def decrypt(self):
        answer = json.loads(original(self))
        answer.pop("Plaintext", None)
        return json.dumps(answer)

    responses.KmsResponse.decrypt = decrypt


FAULTS = {"decrypt-without-plaintext": inject_decrypt_without_plaintext}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fault", choices=sorted(FAULTS), help="misbehave on purpose (tests)")
    args = parser.parse_args()
    patch()
    if args.fault:
        FAULTS[args.fault]()
    moto.server.main(["-H", args.host, "-p", str(args.port)])


if __name__ == "__main__":
    main()
