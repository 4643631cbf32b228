// The f16 matmul tier's workgroup tile type (see matmul.wgsl). Composed first: a directive must precede
// every declaration. Needs the device feature 'shader-f16'.
enable f16;
alias tile4 = vec4<f16>;
