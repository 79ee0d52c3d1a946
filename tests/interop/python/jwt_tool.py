"""Keys and tokens for midge's JWT tests, made with PyJWT and cryptography.

  jwt_tool.py keys DIR NAME ALG   writes DIR/NAME.key (private PEM), DIR/NAME.pub (public
                                  PEM) and DIR/NAME.jwk (the public JWK, kid NAME)
  jwt_tool.py token SPEC          prints a token; SPEC is JSON: {"alg", "secret" or
                                  "key_file", "kid" (optional), "claims", "exp_in"
                                  (seconds from now, added as exp; optional)}
"""

import json
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def keys(directory, name, alg):
    if alg.startswith(("RS", "PS")):
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        algorithm = jwt.algorithms.RSAAlgorithm
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        algorithm = jwt.algorithms.ECAlgorithm
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
        algorithm = jwt.algorithms.OKPAlgorithm
    else:
        sys.exit(f"no key type for {alg}")
    public = private.public_key()
    with open(f"{directory}/{name}.key", "wb") as f:
        f.write(private.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    with open(f"{directory}/{name}.pub", "wb") as f:
        f.write(public.public_bytes(serialization.Encoding.PEM,
                                    serialization.PublicFormat.SubjectPublicKeyInfo))
    jwk = json.loads(algorithm.to_jwk(public))
    jwk.update({"kid": name, "alg": alg, "use": "sig"})
    with open(f"{directory}/{name}.jwk", "w") as f:
        json.dump(jwk, f)


def token(spec):
    claims = dict(spec["claims"])
    if "exp_in" in spec:
        claims["exp"] = int(time.time()) + spec["exp_in"]
    if "secret" in spec:
        key = spec["secret"]
    else:
        with open(spec["key_file"], "rb") as f:
            key = f.read()
    headers = {"kid": spec["kid"]} if "kid" in spec else None
    print(jwt.encode(claims, key, algorithm=spec["alg"], headers=headers))


if sys.argv[1] == "keys":
    keys(*sys.argv[2:5])
else:
    token(json.loads(sys.argv[2]))
