package rpcevents

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/fleet-ai/ray-executor/shared/domain"
)

// Decoding a request costs far more memory than its bytes when it is mostly tiny repeated
// entries: 4 MiB of empty `agents` entries decode to ~85x that in structs. Requests are
// therefore checked for shape before they are decoded, without materialising anything:
// at most MaxElements fields or values in all, nested at most MaxDepth deep. The largest
// request the default limits admit has about 25,000 (16 KiB of constraints.metadata as
// two-byte keys is ~8,200 map entries of 3 fields each; 32 agents of 6), and a message at
// the bound is small on the wire (two bytes an entry), so what it decodes to is bounded too.
const (
	MaxElements = 32768
	MaxDepth    = 32
)

// ShapeError is what a request over the shape bounds is refused with; it wraps
// domain.ErrInvalid.
type ShapeError struct{ msg string }

func (e *ShapeError) Error() string { return e.msg }
func (e *ShapeError) Unwrap() error { return domain.ErrInvalid }

func shapeError(md protoreflect.MessageDescriptor, what string) error {
	return &ShapeError{msg: fmt.Sprintf("the %s %s; it was refused before being decoded", md.FullName(), what)}
}

// WireSource is what CheckWireShape reads: a []byte (BytesSource) or grpc-go's mem.Reader
// over the frames a message arrived in, so that a message need not be copied into one
// buffer to be checked.
type WireSource interface {
	io.ByteReader
	Discard(n int) (int, error)
}

// BytesSource is a WireSource over b.
func BytesSource(b []byte) WireSource { return &bytesSource{b: b} }

type bytesSource struct{ b []byte }

func (s *bytesSource) ReadByte() (byte, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	c := s.b[0]
	s.b = s.b[1:]
	return c, nil
}

func (s *bytesSource) Discard(n int) (int, error) {
	if n > len(s.b) {
		k := len(s.b)
		s.b = nil
		return k, io.EOF
	}
	s.b = s.b[n:]
	return n, nil
}

// CheckWireShape reads size bytes of binary protobuf of message md from r, descending only
// into the fields md declares as messages, and refuses data with more than MaxElements
// fields in all, nested deeper than MaxDepth, or using groups (which proto3, and so this
// API, never sends). It allocates nothing per field. Malformed data ends the check without
// an error: the decoder describes it.
func CheckWireShape(r WireSource, size int, md protoreflect.MessageDescriptor) error {
	w := wireWalk{r: r, top: md, budget: MaxElements, counts: map[protowire.Number]int{}}
	err := w.message(md, size, 0)
	if errors.Is(err, errMalformed) {
		return nil
	}
	return err
}

var errMalformed = errors.New("malformed")

type wireWalk struct {
	r      WireSource
	top    protoreflect.MessageDescriptor
	budget int
	// field is the top-level field being walked; counts, the fields each top-level field
	// holds, so that a refusal names the field that holds the most.
	field  protowire.Number
	counts map[protowire.Number]int
}

func (w *wireWalk) tooMany() error {
	var most protowire.Number
	for n, c := range w.counts {
		if c > w.counts[most] || most == 0 {
			most = n
		}
	}
	name := fmt.Sprintf("field %d", most)
	if fd := w.top.Fields().ByNumber(most); fd != nil {
		name = string(fd.Name())
	}
	return shapeError(w.top, fmt.Sprintf("has more than %d fields in all (%d of them in %s)", MaxElements, w.counts[most], name))
}

func (w *wireWalk) varint() (uint64, int, error) {
	var v uint64
	for i := 0; i < 10; i++ {
		c, err := w.r.ReadByte()
		if err != nil {
			return 0, 0, errMalformed
		}
		v |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return v, i + 1, nil
		}
	}
	return 0, 0, errMalformed
}

func (w *wireWalk) skip(n int) error {
	if n < 0 {
		return errMalformed
	}
	if k, err := w.r.Discard(n); err != nil || k != n {
		return errMalformed
	}
	return nil
}

// message walks size bytes of message md.
func (w *wireWalk) message(md protoreflect.MessageDescriptor, size, depth int) error {
	if depth > MaxDepth {
		return shapeError(w.top, fmt.Sprintf("nests messages more than %d deep", MaxDepth))
	}
	for size > 0 {
		tag, n, err := w.varint()
		if err != nil {
			return err
		}
		size -= n
		num, typ := protowire.Number(tag>>3), protowire.Type(tag&7)
		if depth == 0 {
			w.field = num
		}
		w.counts[w.field]++
		if w.budget--; w.budget < 0 {
			return w.tooMany()
		}
		switch typ {
		case protowire.VarintType:
			_, n, err = w.varint()
		case protowire.Fixed32Type:
			n, err = 4, w.skip(4)
		case protowire.Fixed64Type:
			n, err = 8, w.skip(8)
		case protowire.BytesType:
			var l uint64
			if l, n, err = w.varint(); err != nil {
				return err
			}
			if l > uint64(size) {
				return errMalformed
			}
			var fd protoreflect.FieldDescriptor
			if md != nil {
				fd = md.Fields().ByNumber(num)
			}
			if fd != nil && fd.Kind() == protoreflect.MessageKind {
				err = w.message(fd.Message(), int(l), depth+1)
			} else {
				err = w.skip(int(l))
			}
			n += int(l)
		default:
			return shapeError(w.top, "uses protobuf groups, which this API never sends")
		}
		if err != nil {
			return err
		}
		size -= n
	}
	if size < 0 {
		return errMalformed
	}
	return nil
}

// CheckJSONShape streams JSON data (of message md) token by token, refusing more than MaxElements values
// in all or nesting deeper than MaxDepth. Malformed data is left to the decoder.
func CheckJSONShape(data []byte, md protoreflect.MessageDescriptor) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	depth, values := 0, 0
	// key is the top-level field being read; counts, the tokens each holds, so that a
	// refusal names the field that holds the most.
	key, expectKey, counts := "", false, map[string]int{}
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return nil // malformed: the decoder says how
		}
		switch {
		case depth == 1 && expectKey:
			key, _ = tok.(string)
			expectKey = false
		case tok == json.Delim('{') || tok == json.Delim('['):
			if depth++; depth > MaxDepth {
				return shapeError(md, fmt.Sprintf("nests objects or arrays more than %d deep", MaxDepth))
			}
			expectKey = depth == 1 && tok == json.Delim('{')
		case tok == json.Delim('}') || tok == json.Delim(']'):
			depth--
			expectKey = depth == 1
			continue
		default:
			expectKey = depth == 1
		}
		counts[key]++
		if values++; values > 2*MaxElements { // keys and values both count as tokens
			most := ""
			for k, c := range counts {
				if c > counts[most] {
					most = k
				}
			}
			return shapeError(md, fmt.Sprintf("has more than %d fields in all (%d of them in %s)", MaxElements, counts[most], most))
		}
	}
}
