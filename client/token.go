package client

import (
	"context"
	"strings"

	"google.golang.org/grpc/credentials"
)

// tokenCreds are the per-call credentials of WithToken.
type tokenCreds struct{ header string }

var _ credentials.PerRPCCredentials = tokenCreds{}

// TokenCredentials are the per-call credentials WithToken uses, for
// callers that dial quorumq with gRPC themselves
// (grpc.WithPerRPCCredentials): "authorization: Bearer <token>" on every
// call, over TLS only. A token that is empty or holds spaces or control
// characters is refused (ErrInvalid).
func TokenCredentials(token string) (credentials.PerRPCCredentials, error) {
	return newTokenCreds(token)
}

// newTokenCreds checks token: it goes into a metadata value, which must be
// printable ASCII on one line.
func newTokenCreds(token string) (tokenCreds, error) {
	token = strings.TrimSpace(token)
	if token == "" {
		return tokenCreds{}, invalidf("WithToken: empty token")
	}
	for i := 0; i < len(token); i++ {
		if b := token[i]; b < 0x21 || b > 0x7e {
			return tokenCreds{}, invalidf("WithToken: the token holds a character (byte %#x) a token cannot have", b)
		}
	}
	return tokenCreds{header: "Bearer " + token}, nil
}

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": t.header}, nil
}

// RequireTransportSecurity: never send a token in plaintext.
func (tokenCreds) RequireTransportSecurity() bool { return true }
