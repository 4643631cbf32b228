// The baseline matmul tier's workgroup tile type (see matmul.wgsl): f32, no feature needed.
alias tile4 = vec4<f32>;
