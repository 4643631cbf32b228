// Composed first in front of a shader that reads f16 natively (kv_f16_native.wgsl): a directive
// must precede every declaration. Needs the device feature 'shader-f16'.
enable f16;
