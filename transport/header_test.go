package transport

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadHeader(t *testing.T) {
	long := strings.Repeat("x", MaxGroupIDLen)
	tests := []struct {
		name    string
		in      string
		want    header
		wantErr error // nil: success; errBadHeader or io.ErrUnexpectedEOF / io.EOF
	}{
		{"raft", string(appendHeader(nil, "g1", "n1/3")), header{kind: kindRaft, group: "g1", target: "n1/3"}, nil},
		{"raft longest ids", string(appendHeader(nil, long, long)), header{kind: kindRaft, group: long, target: long}, nil},
		{"grpc", http2Preface, header{kind: kindGRPC, replay: []byte(http2Preface)}, nil},
		{"empty", "", header{}, io.EOF},
		{"short magic", "QQ", header{}, io.ErrUnexpectedEOF},
		{"http/1", "GET / HTTP/1.1\r\n\r\n", header{}, errBadHeader},
		{"version 1, no target", "QQR1\x00\x01g", header{}, errBadHeader},
		{"wrong version", "QQR3\x00\x01g\x00\x01n", header{}, errBadHeader},
		{"zero length", "QQR2\x00\x00", header{}, errBadHeader},
		{"too long", "QQR2\x01\x01" + long + "x", header{}, errBadHeader},
		{"truncated id", "QQR2\x00\x05g1", header{}, io.ErrUnexpectedEOF},
		{"truncated length", "QQR2\x00", header{}, io.ErrUnexpectedEOF},
		{"no target", "QQR2\x00\x02g1", header{}, io.EOF},
		{"empty target", "QQR2\x00\x02g1\x00\x00", header{}, errBadHeader},
		{"target too long", "QQR2\x00\x02g1\x01\x01" + long + "x", header{}, errBadHeader},
		{"truncated target", "QQR2\x00\x02g1\x00\x04n1", header{}, io.ErrUnexpectedEOF},
		{"bad preface", "PRI * HTTP/1.0\r\n\r\nSM\r\n\r\n", header{}, errBadHeader},
		{"short preface", "PRI * HTTP/2.0", header{}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Trailing bytes must stay unread.
			r := strings.NewReader(tt.in + "tail")
			if tt.wantErr != nil {
				r = strings.NewReader(tt.in)
			}
			got, err := readHeader(r)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.kind != tt.want.kind || got.group != tt.want.group || got.target != tt.want.target || !bytes.Equal(got.replay, tt.want.replay) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			if rest, _ := io.ReadAll(r); string(rest) != "tail" {
				t.Fatalf("readHeader consumed past the header: rest %q", rest)
			}
		})
	}
}

func FuzzReadHeader(f *testing.F) {
	f.Add([]byte(http2Preface))
	f.Add(appendHeader(nil, "g1", "n1/2"))
	f.Add([]byte("QQR2\xff\xff"))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		h, err := readHeader(r)
		if err != nil {
			return
		}
		read := len(in) - r.Len()
		switch h.kind {
		case kindRaft:
			if len(h.group) == 0 || len(h.group) > MaxGroupIDLen || len(h.target) == 0 || len(h.target) > MaxServerIDLen {
				t.Fatalf("accepted group id of %d bytes, server id of %d", len(h.group), len(h.target))
			}
			if !bytes.Equal(in[:read], appendHeader(nil, h.group, h.target)) {
				t.Fatalf("header %q does not re-encode to %q, %q", in[:read], h.group, h.target)
			}
		case kindGRPC:
			if string(h.replay) != http2Preface || read != len(http2Preface) {
				t.Fatalf("bad grpc sniff: replay %q, read %d", h.replay, read)
			}
		default:
			t.Fatalf("no kind and no error")
		}
	})
}
