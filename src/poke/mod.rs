//! Text poke: instruction encoding, CMODX rules, cache maintenance (placeholder, being written).
