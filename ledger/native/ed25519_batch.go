// Batch verification of Ed25519 signatures, loaded by ledger/ed25519.py through ctypes.
//
// Why by hand: every replica checks every client transaction, and that check is a replica's
// largest CPU cost. Checking a block's signatures together (one multi-scalar multiplication
// for the whole block) costs about half as much per signature as checking them one by one,
// and none of the libraries reachable from Python (cryptography/OpenSSL, PyNaCl/libsodium, the
// ed25519-zebra binding) offers it. The curve arithmetic is filippo.io/edwards25519 (the
// library under Go's crypto/ed25519); this file only composes it, in the way of ZIP 215 and
// of the ed25519consensus and ed25519-zebra batch verifiers:
//
//	[8] ( -(sum z_i s_i) B + sum z_i R_i + sum_A (sum_{i: A_i = A} z_i k_i) A ) == identity
//
// with k_i = SHA-512(R_i || A_i || M_i) mod l over the encodings as received, s_i required to
// be canonical, R_i and A_i decoded as ZIP 215 decodes them (non-canonical encodings of
// points accepted, which is what edwards25519's SetBytes does), and z_i random 128-bit
// coefficients. A set of signatures that each pass the cofactored single check passes this
// check; a set with any that fails passes with probability about 2^-128. So "yes" from here
// means each would pass ed25519-zebra's single check; "no" tells the caller to check them one
// by one, which also finds which failed. The verdict a replica reaches is therefore the single
// check's, and every replica reaches the same one.
//
// Public keys of small order, which ZIP 215 accepts, are refused by the caller before a key
// gets here (ledger/ed25519.py).
package main

// #include <stdint.h>
import "C"

import (
	"crypto/rand"
	"crypto/sha512"
	"sync"
	"unsafe"

	"filippo.io/edwards25519"
)

const (
	publicKeyBytes = 32
	signatureBytes = 64
	headerBytes    = publicKeyBytes + signatureBytes
	zBytes         = 16 // the random coefficients: 128 bits
	maxItems       = 1 << 16
	maxCachedKeys  = 4096 // decoded public keys kept between calls (members sign again and again)
)

// Decoding a point costs a field exponentiation, about a fifth of a signature's share of a batch
// in which every signer is distinct; the same members' keys come back block after block.
var (
	keysMu sync.Mutex
	keys   = make(map[[publicKeyBytes]byte]*edwards25519.Point)
)

// decodeKey decodes a public key as SetBytes does (ZIP 215), from the cache when it can.
func decodeKey(key [publicKeyBytes]byte) (*edwards25519.Point, error) {
	keysMu.Lock()
	cached, seen := keys[key]
	keysMu.Unlock()
	if seen {
		return new(edwards25519.Point).Set(cached), nil
	}
	point, err := new(edwards25519.Point).SetBytes(key[:])
	if err != nil {
		return nil, err
	}
	keysMu.Lock()
	if len(keys) >= maxCachedKeys {
		for old := range keys { // any one: a full cache loses an arbitrary entry
			delete(keys, old)
			break
		}
	}
	keys[key] = new(edwards25519.Point).Set(point)
	keysMu.Unlock()
	return point, nil
}

// wattmesh_ed25519_batch_verify checks n signatures packed back to back in the size bytes at
// buf: item i is public key (32 bytes) || signature (64) || message, and ends[i] is the offset
// just past it. It returns 1 if every signature is valid, 0 if any is not or if the items do
// not tile the buffer exactly.
//
//export wattmesh_ed25519_batch_verify
func wattmesh_ed25519_batch_verify(buf *C.uchar, size C.size_t, ends *C.uint32_t, n C.int) C.int {
	count := int(n)
	if count <= 0 || count > maxItems || buf == nil || ends == nil {
		return 0
	}
	endList := unsafe.Slice((*uint32)(unsafe.Pointer(ends)), count)
	if uint64(endList[count-1]) != uint64(size) {
		return 0
	}
	data := unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(size))
	if batchVerify(data, endList) {
		return 1
	}
	return 0
}

func batchVerify(data []byte, ends []uint32) bool {
	count := len(ends)
	random := make([]byte, zBytes*count)
	if _, err := rand.Read(random); err != nil {
		return false
	}
	// point 0 is the base point; then each R_i; each distinct A once (its terms coalesced)
	scalars := make([]*edwards25519.Scalar, 1, 2*count+1)
	points := make([]*edwards25519.Point, 1, 2*count+1)
	baseCoefficient := edwards25519.NewScalar()
	scalars[0] = baseCoefficient
	points[0] = edwards25519.NewGeneratorPoint()
	keyAt := make(map[[publicKeyBytes]byte]int)
	hash := sha512.New()
	var digest [sha512.Size]byte
	var wide [32]byte
	start := 0
	for i, e := range ends {
		end := int(e)
		if end < start+headerBytes || end > len(data) {
			return false
		}
		item := data[start:end]
		start = end
		var key [publicKeyBytes]byte
		copy(key[:], item[:publicKeyBytes])
		rBytes := item[publicKeyBytes : publicKeyBytes+32]
		s, err := edwards25519.NewScalar().SetCanonicalBytes(item[publicKeyBytes+32 : headerBytes])
		if err != nil {
			return false
		}
		R, err := new(edwards25519.Point).SetBytes(rBytes)
		if err != nil {
			return false
		}
		hash.Reset()
		hash.Write(rBytes)
		hash.Write(key[:])
		hash.Write(item[headerBytes:])
		k, err := edwards25519.NewScalar().SetUniformBytes(hash.Sum(digest[:0]))
		if err != nil {
			return false
		}
		copy(wide[:zBytes], random[zBytes*i:zBytes*(i+1)])
		z, err := edwards25519.NewScalar().SetCanonicalBytes(wide[:])
		if err != nil {
			return false
		}
		baseCoefficient.MultiplyAdd(z, s, baseCoefficient)
		scalars = append(scalars, z)
		points = append(points, R)
		zk := edwards25519.NewScalar().Multiply(z, k)
		if at, seen := keyAt[key]; seen {
			scalars[at].Add(scalars[at], zk)
			continue
		}
		A, err := decodeKey(key)
		if err != nil {
			return false
		}
		keyAt[key] = len(points)
		scalars = append(scalars, zk)
		points = append(points, A)
	}
	baseCoefficient.Negate(baseCoefficient)
	sum := new(edwards25519.Point).VarTimeMultiScalarMult(scalars, points)
	return sum.MultByCofactor(sum).Equal(edwards25519.NewIdentityPoint()) == 1
}

func main() {}
