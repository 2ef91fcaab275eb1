package sessiongate

// Debian 12 packages grpc-go 1.33 with github.com/golang/protobuf 1.3.5, whose "proto" codec
// predates the protobuf API that protoc-gen-go 1.20+ generates for (it cannot marshal those
// messages). grpc-go 1.35 and newer marshal with google.golang.org/protobuf themselves; for the
// test command, which builds against Debian's packages, this registers the same codec. A
// service on a current grpc-go needs none of this.

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"
)

type protoCodec struct{}

func (protoCodec) Name() string { return "proto" }

func (protoCodec) Marshal(v interface{}) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("not a protobuf message: %T", v)
	}
	return proto.Marshal(m)
}

func (protoCodec) Unmarshal(data []byte, v interface{}) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("not a protobuf message: %T", v)
	}
	return proto.Unmarshal(data, m)
}

func init() { encoding.RegisterCodec(protoCodec{}) }
