// Signing in the browser: deterministic CBOR (SPEC §3), COSE_Sign1 with
// Ed25519, and an account key held in memory only. Nothing here sends
// anything: the page posts the signed bytes this file makes, never a key.
//
// Deterministic CBOR, only what the market's maps need: unsigned and
// negative integers (shortest form), byte strings (Uint8Array), text
// (UTF-8), arrays, maps with integer keys 0..23 in ascending order (a Map
// or a plain object whose keys are those integers), and tags (CrevTag).
// Lengths are always definite.
"use strict";

(function (global) {
  class CrevTag {
    constructor(tag, value) { this.tag = tag; this.value = value; }
  }

  function head(out, major, value) {
    if (!Number.isSafeInteger(value) || value < 0) throw new Error("CBOR: not an unsigned integer: " + value);
    const m = major << 5;
    if (value < 24) out.push(m | value);
    else if (value < 0x100) out.push(m | 24, value);
    else if (value < 0x10000) out.push(m | 25, value >> 8, value & 0xff);
    else if (value < 0x100000000) out.push(m | 26, (value >>> 24) & 0xff, (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff);
    else {
      const high = Math.floor(value / 0x100000000), low = value >>> 0;
      out.push(m | 27, (high >>> 24) & 0xff, (high >>> 16) & 0xff, (high >>> 8) & 0xff, high & 0xff,
               (low >>> 24) & 0xff, (low >>> 16) & 0xff, (low >>> 8) & 0xff, low & 0xff);
    }
  }

  function entries(value) {
    const pairs = value instanceof Map ? [...value.entries()] : Object.entries(value);
    const keyed = pairs.map(([key, v]) => {
      const k = typeof key === "number" ? key : (/^(0|[1-9][0-9]*)$/.test(key) ? Number(key) : NaN);
      if (!Number.isInteger(k) || k < 0 || k > 23) throw new Error("CBOR: map keys are integers 0..23, not " + key);
      return [k, v];
    });
    keyed.sort((a, b) => a[0] - b[0]);
    for (let i = 1; i < keyed.length; i++) if (keyed[i][0] === keyed[i - 1][0]) throw new Error("CBOR: duplicate key");
    return keyed;
  }

  function encodeInto(out, value, depth) {
    if (depth > 16) throw new Error("CBOR: nested too deep");
    if (typeof value === "number") {
      if (!Number.isSafeInteger(value)) throw new Error("CBOR: only safe integers, not " + value);
      if (value >= 0) head(out, 0, value); else head(out, 1, -1 - value);
    } else if (value instanceof Uint8Array) {
      head(out, 2, value.length);
      for (const byte of value) out.push(byte);
    } else if (typeof value === "string") {
      const bytes = new TextEncoder().encode(value);
      head(out, 3, bytes.length);
      for (const byte of bytes) out.push(byte);
    } else if (Array.isArray(value)) {
      head(out, 4, value.length);
      for (const item of value) encodeInto(out, item, depth + 1);
    } else if (value instanceof CrevTag) {
      head(out, 6, value.tag);
      encodeInto(out, value.value, depth + 1);
    } else if (value !== null && typeof value === "object") {
      const pairs = entries(value);
      head(out, 5, pairs.length);
      for (const [key, item] of pairs) { out.push(key); encodeInto(out, item, depth + 1); }
    } else {
      throw new Error("CBOR: cannot encode " + typeof value);
    }
  }

  function encode(value) {
    const out = [];
    encodeInto(out, value, 0);
    return new Uint8Array(out);
  }

  // ---------------------------------------------------------------- bytes

  function hexToBytes(hex) {
    if (!/^([0-9a-fA-F]{2})*$/.test(hex)) throw new Error("not hex");
    const out = new Uint8Array(hex.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
    return out;
  }

  function bytesToHex(bytes) {
    return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  function base64(bytes) {
    let binary = "";
    for (const byte of bytes) binary += String.fromCharCode(byte);
    return btoa(binary);
  }

  function fromBase64url(text) {
    const plain = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
    return Uint8Array.from(atob(plain), (c) => c.charCodeAt(0));
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const part of parts) { out.set(part, at); at += part.length; }
    return out;
  }

  function nonce() {
    return crypto.getRandomValues(new Uint8Array(16));
  }

  // ---------------------------------------------------------------- keys and COSE_Sign1

  // PKCS#8 (RFC 8410) for an Ed25519 private key: this prefix, then the 32-byte seed.
  const PKCS8_ED25519 = hexToBytes("302e020100300506032b657004220420");

  // The seed `crev registry keygen` wrote (64 hex digits) as a signing key
  // that cannot be exported, and its public key. WebCrypto gives no public
  // key for a private one, so an extractable copy is made only to read the
  // JWK's x (the public key) and then dropped. The seed's bytes are zeroed.
  async function importSeed(seedHex) {
    const text = String(seedHex).trim();
    if (!/^[0-9a-fA-F]{64}$/.test(text)) throw new Error("the key is 64 hex digits (the file `crev registry keygen` wrote)");
    const seed = hexToBytes(text);
    const pkcs8 = concat(PKCS8_ED25519, seed);
    try {
      let copy = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, true, ["sign"]);
      const jwk = await crypto.subtle.exportKey("jwk", copy);
      copy = null;
      const publicKey = fromBase64url(jwk.x);
      jwk.d = ""; jwk.x = "";
      const key = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, false, ["sign"]);
      const kid = new Uint8Array(await crypto.subtle.digest("SHA-256", publicKey)).slice(0, 8);
      return { key, publicKey, kid };
    } finally {
      seed.fill(0);
      pkcs8.fill(0);
    }
  }

  // COSE_Sign1 (SPEC §3): 18([<<{1: -8, 4: kid}>>, {}, payload, signature]), the
  // signature over ["Signature1", protected, h'', payload].
  async function sign1(payload, signer) {
    const protectedHeader = encode(new Map([[1, -8], [4, signer.kid]]));
    const toSign = encode(["Signature1", protectedHeader, new Uint8Array(0), payload]);
    const signature = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, signer.key, toSign));
    return encode(new CrevTag(18, [protectedHeader, new Map(), payload, signature]));
  }

  async function signMap(fields, signer) {
    return sign1(encode(fields), signer);
  }

  global.crevCose = { CrevTag, encode, hexToBytes, bytesToHex, base64, fromBase64url, nonce, importSeed, sign1, signMap };
})(typeof window !== "undefined" ? window : globalThis);
