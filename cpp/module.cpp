// pybind11 bindings of the native module `llama_medusa._native`. Thin: shape checks and GIL release, no logic.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <thread>

#include "eagle.h"
#include "heads.h"
#include "py_arrays.h"
#include "ternary_gemm.h"
#include "ternary_lut.h"
#include "tree_attention.h"
#include "bitnet.h"
#include "dot.h"

namespace py = pybind11;
using namespace medusa;
using medusa_py::Arr;
using medusa_py::need_2d;

namespace {

template <class T>
std::vector<T> to_vec(const Arr<T>& a) {
    return std::vector<T>(a.data(), a.data() + a.size());
}

// float16 arrays are kept as float16 (their bits), anything else as float32.
Dense dense_from(py::handle obj, const char* what) {
    py::array a = py::array::ensure(obj);
    if (!a) throw py::value_error(std::string(what) + " must be an array");
    Dense d;
    if (a.dtype().kind() == 'f' && a.dtype().itemsize() == 2) {
        auto raw = py::array(a.attr("view")(py::dtype("uint16")));
        d.f16 = to_vec(Arr<uint16_t>(raw));
    } else {
        d.f32 = to_vec(Arr<float>(a));
    }
    return d;
}

Matrix matrix_from(py::array w, py::object scale) {
    need_2d(w, "projection");
    Matrix m;
    m.rows = (int)w.shape(0);
    m.cols = (int)w.shape(1);
    const auto kind = w.dtype().kind();
    const auto size = w.dtype().itemsize();
    if (kind == 'f' && size == 4) {
        m.dtype = DType::F32;
        m.f32 = to_vec(Arr<float>(w));
    } else if (kind == 'f' && size == 2) {
        m.dtype = DType::F16;
        auto raw = py::array(w.attr("view")(py::dtype("uint16")));
        m.f16 = to_vec(Arr<uint16_t>(raw));
    } else if (kind == 'i' && size == 1) {
        if (scale.is_none()) throw py::value_error("an int8 projection needs one float scale per row");
        m.dtype = DType::I8;
        m.i8 = to_vec(Arr<int8_t>(w));
        m.scale = to_vec(Arr<float>(scale));
    } else {
        throw py::value_error("projection dtype must be float32, float16 or int8 (with scales), got " +
                              std::string(py::str(w.dtype())));
    }
    return m;
}

// Keeps the numpy views (memory-mapped GGUF data) alive as long as the engine that points into them.
struct PyBitnet {
    std::unique_ptr<BitnetEngine> eng;
    py::list keep;
};

template <class T>
const T* ptr_of(py::list& keep, py::handle a, size_t n, const char* what) {
    auto arr = py::array_t<T, py::array::c_style>::ensure(a);
    if (!arr) throw py::value_error(std::string(what) + ": wrong dtype or not C-contiguous");
    if ((size_t)arr.size() != n)
        throw py::value_error(std::string(what) + " has " + std::to_string(arr.size()) + " elements, expected " +
                              std::to_string(n));
    keep.append(arr);
    return arr.data();
}

// Layer `layer`'s ternary matrix `name`, refused if any of its bytes holds code 3: such a file would load and
// generate garbage without a word (bitnet.cpp's ARM builds write an unmarked 64/16 layout that reads that way).
TernaryWeight ternary_of(py::list& keep, py::dict d, int layer, const char* name, int rows, int cols) {
    py::tuple t = d[name].cast<py::tuple>();  // (bytes [rows, cols/4] uint8, scale)
    TernaryWeight w;
    w.rows = rows;
    w.cols = cols;
    const size_t n = (size_t)rows * cols / 4;
    w.data = ptr_of<uint8_t>(keep, t[0], n, name);
    w.scale = t[1].cast<float>();
    const size_t bad = i2s_find_code3(w.data, n);
    if (bad != n)
        throw py::value_error("blk." + std::to_string(layer) + "." + name + ".weight holds code 3 at byte " +
                              std::to_string(bad) + " (not a ternary value): the file is corrupt, or in an I2_S "
                              "layout other than the canonical 128/32 (bitnet.cpp's ARM builds write 64/16)");
    return w;
}

// A ternary kernel by name (None: the one set for the process), refused with the list when this build or CPU lacks it.
int kernel_of(py::object name) {
    if (name.is_none()) return ternary_kernel();
    const std::string n = name.cast<std::string>();
    const int k = ternary_kernel_index(n);
    if (k < 0) {
        std::string avail;
        for (const auto& a : ternary_kernels_available()) avail += (avail.empty() ? "" : ", ") + a;
        throw py::value_error("ternary kernel '" + n + "' is not available on this CPU and build (available: " +
                              avail + ")");
    }
    return k;
}

// Which heads a head_states/topk call evaluates (all, or one), and the token embeddings conditioned heads see.
struct HeadSelection {
    int h0 = 0, h1 = 0, n_emb = 0;
    Arr<float> emb;
    const float* emb_ptr() const { return n_emb ? emb.data() : nullptr; }
};

HeadSelection select_heads(const HeadsEngine& e, const Arr<float>& hidden, py::object head, py::object emb) {
    need_2d(hidden, "hidden");
    if ((int)hidden.shape(1) != e.hidden())
        throw py::value_error("hidden state has width " + std::to_string(hidden.shape(1)) + ", the heads expect " +
                              std::to_string(e.hidden()));
    if (e.n_heads() == 0) throw py::value_error("no heads loaded");
    HeadSelection s;
    s.h1 = e.n_heads();
    if (!head.is_none()) {
        const int h = head.cast<int>();
        if (h < 0 || h >= e.n_heads())
            throw py::value_error("head " + std::to_string(h) + " does not exist; " + std::to_string(e.n_heads()) +
                                  " heads are loaded");
        s.h0 = h;
        s.h1 = h + 1;
    }
    if (!emb.is_none()) {
        s.emb = Arr<float>(emb);
        const int n = (int)hidden.shape(0);
        if (s.emb.ndim() != 3 || s.emb.shape(0) != n || s.emb.shape(2) != e.hidden())
            throw py::value_error("token embeddings must have shape [" + std::to_string(n) + ", tokens, " +
                                  std::to_string(e.hidden()) + "]");
        s.n_emb = (int)s.emb.shape(1);
    }
    return s;
}

}  // namespace

PYBIND11_MODULE(_native, mod) {
    mod.doc() = "llama-medusa native kernels (CPU)";

    py::class_<HeadsEngine>(mod, "HeadsEngine")
        .def(py::init([](int hidden, int n_threads) {
                 if (n_threads <= 0) n_threads = (int)std::max(1u, std::thread::hardware_concurrency());
                 return new HeadsEngine(hidden, n_threads);
             }),
             py::arg("hidden"), py::arg("n_threads") = 0)
        .def("add_projection", [](HeadsEngine& e, py::array w, py::object scale) {
                 return e.add_projection(matrix_from(w, scale));
             },
             py::arg("weight"), py::arg("scale") = py::none(),
             "Adds a [vocab, hidden] projection (float32, float16, or int8 with per-row scales); returns its id.")
        .def("add_head", [](HeadsEngine& e, py::list blocks, int proj, py::object cond) {
                 Head h;
                 h.proj = proj;
                 if (!cond.is_none())
                     for (auto u : cond.cast<py::list>()) {
                         if (py::array::ensure(u).ndim() != 2)
                             throw py::value_error("a conditioning matrix must be 2-D");
                         h.cond.push_back(dense_from(u, "conditioning matrix"));
                     }
                 for (auto item : blocks) {
                     auto t = item.cast<py::tuple>();
                     if (t.size() != 3) throw py::value_error("a block is (w_in, b_in or None, w_out or None)");
                     Block b;
                     py::array w_in = py::array::ensure(t[0]);
                     need_2d(w_in, "w_in");
                     b.inner = (int)w_in.shape(0);
                     if ((int)w_in.shape(1) != e.hidden())
                         throw py::value_error("w_in has " + std::to_string(w_in.shape(1)) +
                                               " columns, hidden size is " + std::to_string(e.hidden()));
                     b.w_in = dense_from(w_in, "w_in");
                     if (!t[1].is_none()) b.b_in = to_vec(Arr<float>(t[1]));
                     if (!t[2].is_none()) {
                         py::array w_out = py::array::ensure(t[2]);
                         need_2d(w_out, "w_out");
                         if ((int)w_out.shape(0) != e.hidden() || (int)w_out.shape(1) != b.inner)
                             throw py::value_error("w_out must be [hidden, inner]");
                         b.w_out = dense_from(w_out, "w_out");
                     }
                     h.blocks.push_back(std::move(b));
                 }
                 e.add_head(std::move(h));
             },
             py::arg("blocks"), py::arg("proj"), py::arg("cond") = py::none())
        .def_property_readonly("hidden", &HeadsEngine::hidden)
        .def_property_readonly("n_heads", &HeadsEngine::n_heads)
        .def_property_readonly("vocab", &HeadsEngine::vocab)
        .def_property("n_threads", &HeadsEngine::n_threads, &HeadsEngine::set_n_threads)
        .def("head_states", [](const HeadsEngine& e, Arr<float> hidden, py::object head, py::object emb) {
                 auto sel = select_heads(e, hidden, head, emb);
                 const int n = (int)hidden.shape(0);
                 py::array_t<float> out({n, sel.h1 - sel.h0, e.hidden()});
                 {
                     py::gil_scoped_release nogil;
                     e.head_states(hidden.data(), n, out.mutable_data(), sel.h0, sel.h1, sel.emb_ptr(), sel.n_emb);
                 }
                 return out;
             },
             py::arg("hidden"), py::arg("head") = py::none(), py::arg("emb") = py::none())
        .def("topk", [](const HeadsEngine& e, Arr<float> hidden, int k, py::object head, py::object emb) {
                 auto sel = select_heads(e, hidden, head, emb);
                 const int n = (int)hidden.shape(0), G = sel.h1 - sel.h0;
                 py::array_t<int32_t> ids({n, G, k});
                 py::array_t<float> scores({n, G, k});
                 {
                     py::gil_scoped_release nogil;
                     e.topk(hidden.data(), n, k, ids.mutable_data(), scores.mutable_data(), sel.h0, sel.h1,
                            sel.emb_ptr(), sel.n_emb);
                 }
                 return py::make_tuple(ids, scores);
             },
             py::arg("hidden"), py::arg("k"), py::arg("head") = py::none(), py::arg("emb") = py::none(),
             "Top-k token ids and logits of every head (or of `head` only) for each hidden row: ([n, G, k] int32, "
             "[n, G, k] float32). emb [n, J, hidden]: embeddings of the root and the drafts so far, which "
             "token-conditioned heads add through their U matrices.")
        .def("project", [](const HeadsEngine& e, int proj, Arr<float> x) {
                 need_2d(x, "x");
                 const int m = (int)x.shape(0);
                 py::array_t<float> out({m, e.vocab()});
                 {
                     py::gil_scoped_release nogil;
                     e.project(proj, x.data(), m, out.mutable_data());
                 }
                 return out;
             });

    py::class_<EagleLayer>(mod, "EagleLayer")
        .def(py::init([](py::dict cfg, py::dict mats, py::object fc_b, py::object qkv_b, Arr<float> norm,
                         int n_threads) {
                 EagleConfig c;
                 c.hidden = cfg["hidden"].cast<int>();
                 c.n_head = cfg["n_head"].cast<int>();
                 c.n_kv = cfg["n_kv"].cast<int>();
                 c.head_dim = cfg["head_dim"].cast<int>();
                 c.inter = cfg["inter"].cast<int>();
                 c.eps = cfg["eps"].cast<float>();
                 c.rope_theta = cfg["rope_theta"].cast<float>();
                 c.rope_scale = cfg["rope_scale"].cast<float>();
                 auto m = [&](const char* name) {
                     py::tuple t = mats[name].cast<py::tuple>();
                     return matrix_from(t[0].cast<py::array>(), t[1]);
                 };
                 auto vec = [](py::object o) {
                     return o.is_none() ? std::vector<float>() : to_vec(Arr<float>(o.cast<py::array>()));
                 };
                 return new EagleLayer(c, m("fc"), vec(fc_b), m("qkv"), vec(qkv_b), m("o"), to_vec(norm),
                                       m("gate_up"), m("down"), m("lm_head"), n_threads);
             }),
             py::arg("config"), py::arg("matrices"), py::arg("fc_bias"), py::arg("qkv_bias"), py::arg("norm"),
             py::arg("n_threads") = 1,
             "An EAGLE draft layer; matrices: name -> (weights, per-row scales or None) for fc, qkv, o, gate_up, "
             "down and lm_head (the draft vocabulary's output rows).")
        .def("extend", [](EagleLayer& e, Arr<float> emb, Arr<float> feat, int pos0) {
                 const int H = e.config().hidden;
                 need_2d(emb, "emb");
                 need_2d(feat, "feat");
                 if (emb.shape(1) != H || feat.shape(1) != H || emb.shape(0) != feat.shape(0))
                     throw py::value_error("emb and feat must both be [m, hidden]");
                 const int m = (int)emb.shape(0);
                 py::array_t<float> out({m, H});
                 {
                     py::gil_scoped_release nogil;
                     e.extend(emb.data(), feat.data(), m, pos0, out.mutable_data());
                 }
                 return out;
             },
             "Appends m true pairs at positions pos0.. to the cache; returns their output features [m, hidden].")
        .def("level", [](EagleLayer& e, Arr<float> emb, Arr<float> feat, Arr<int32_t> pos, Arr<int32_t> parent) {
                 const int H = e.config().hidden;
                 need_2d(emb, "emb");
                 need_2d(feat, "feat");
                 const int n = (int)emb.shape(0);
                 if (emb.shape(1) != H || feat.shape(1) != H || feat.shape(0) != n || pos.size() != n ||
                     parent.size() != n)
                     throw py::value_error("emb, feat [n, hidden], pos and parent_entry [n] must agree");
                 py::array_t<float> out({n, H});
                 {
                     py::gil_scoped_release nogil;
                     e.level(emb.data(), feat.data(), pos.data(), parent.data(), n, out.mutable_data());
                 }
                 return out;
             },
             "One tree level: n scratch entries (parent_entry: the scratch entry of each node's parent, -1 for the "
             "root's children); returns their output features [n, hidden].")
        .def("logits", [](EagleLayer& e, Arr<float> x) {
                 need_2d(x, "x");
                 if (x.shape(1) != e.config().hidden) throw py::value_error("x must be [m, hidden]");
                 const int m = (int)x.shape(0);
                 py::array_t<float> out({m, e.vocab()});
                 {
                     py::gil_scoped_release nogil;
                     e.logits(x.data(), m, out.mutable_data());
                 }
                 return out;
             })
        .def("reset", &EagleLayer::reset)
        .def("clear_scratch", &EagleLayer::clear_scratch)
        .def_property_readonly("cache_len", &EagleLayer::cache_len)
        .def_property_readonly("scratch_len", &EagleLayer::scratch_len)
        .def("cache", [](const EagleLayer& e) {
                 const auto& c = e.config();
                 const int n = e.cache_len();
                 py::array_t<float> k({n, c.n_kv, c.head_dim}), v({n, c.n_kv, c.head_dim});
                 std::copy_n(e.cache_k().data(), (size_t)n * c.n_kv * c.head_dim, k.mutable_data());
                 std::copy_n(e.cache_v().data(), (size_t)n * c.n_kv * c.head_dim, v.mutable_data());
                 return py::make_tuple(k, v);
             }, "The cache's keys (after RoPE) and values, [n, kv heads, head_dim] each.");

    mod.def("quantize_acts", [](Arr<float> x) {
            need_2d(x, "activations");
            const int M = (int)x.shape(0), K = (int)x.shape(1);
            py::array_t<int8_t> q({M, K});
            py::array_t<float> scale(M);
            py::array_t<int32_t> sum(M);
            quantize_acts(x.data(), M, K, q.mutable_data(), scale.mutable_data(), sum.mutable_data());
            return py::make_tuple(q, scale, sum);
        },
        py::arg("x"), "bitnet.cpp's per-token int8 quantisation: (q [M, K] int8, 127/absmax [M], row sums [M]).");
    mod.def("ternary_gemm", [](Arr<uint8_t> w, Arr<float> wscale, Arr<int8_t> q, Arr<float> scale, Arr<int32_t> sum) {
            const auto [N, K, M] = medusa_py::check_ternary_gemm(w, wscale, q, scale, sum);
            py::array_t<float> y({M, N});
            {
                py::gil_scoped_release nogil;
                ternary_gemm(w.data(), wscale.data(), N, K, q.data(), scale.data(), sum.data(), M, y.mutable_data());
            }
            return y;
        },
        py::arg("w"), py::arg("wscale"), py::arg("q"), py::arg("scale"), py::arg("sum"),
        "The scalar reference ternary product over I2_S bytes [N, K/4]: y [M, N] = (S - sum) / scale * wscale. "
        "The GPU's ternary_gemm and the engine's ternary_gemm_tiled equal it bit for bit.");

    mod.def("tree_attention", [](Arr<float> q, Arr<float> k, Arr<float> v, Arr<uint32_t> anc, py::object scale,
                                 int n_threads) {
            medusa_py::need_dims(q, 3, "q");
            medusa_py::need_dims(k, 3, "k");
            medusa_py::need_dims(v, 3, "v");
            medusa_py::need_dims(anc, 2, "ancestor mask");
            const int T = (int)q.shape(0), Hq = (int)q.shape(1), D = (int)q.shape(2);
            const int L = (int)k.shape(0), Hkv = (int)k.shape(1);
            if (k.shape(2) != D || v.shape(0) != L || v.shape(1) != Hkv || v.shape(2) != D)
                throw py::value_error("k and v must both be [L, Hkv, D] with q's D");
            if (Hkv < 1 || Hq % Hkv) throw py::value_error("q's heads must be a multiple of k's heads");
            if (L < T) throw py::value_error("the cache must hold the tree's nodes: L >= T");
            if (anc.shape(0) != T || anc.shape(1) != (T + 31) / 32)
                throw py::value_error("the ancestor mask must be [T, ceil(T/32)] uint32");
            const float sc = scale.is_none() ? 1.0f / std::sqrt((float)D) : scale.cast<float>();
            py::array_t<float> out({T, Hq, D});
            {
                py::gil_scoped_release nogil;
                ThreadPool pool(std::max(1, n_threads));
                tree_attention(q.data(), k.data(), v.data(), anc.data(), out.mutable_data(), T, Hq, Hkv, D, L, sc, pool);
            }
            return out;
        },
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("anc"), py::arg("scale") = py::none(), py::arg("n_threads") = 1,
        "Tree attention on the CPU, as the engine runs it: q [T, Hq, D]; k, v [L, Hkv, D] whose last T slots are the "
        "nodes; anc [T, ceil(T/32)] bit j of row i = node j is an ancestor-or-self of node i.");

    py::class_<PyBitnet>(mod, "BitnetEngine")
        .def(py::init([](py::dict cfg, py::list layers, py::handle tok_embd, py::handle output_norm,
                         py::object output, int n_threads) {
                 BitnetConfig c{};
                 c.n_embd = cfg["n_embd"].cast<int>();
                 c.n_layer = cfg["n_layer"].cast<int>();
                 c.n_head = cfg["n_head"].cast<int>();
                 c.n_head_kv = cfg["n_head_kv"].cast<int>();
                 c.n_ff = cfg["n_ff"].cast<int>();
                 c.n_vocab = cfg["n_vocab"].cast<int>();
                 c.n_ctx = cfg["n_ctx"].cast<int>();
                 c.rope_theta = cfg["rope_theta"].cast<float>();
                 c.eps = cfg["eps"].cast<float>();
                 c.relu2 = cfg["relu2"].cast<bool>();
                 if ((int)layers.size() != c.n_layer) throw py::value_error("layer list does not match n_layer");
                 if (c.n_embd % 128 || c.n_ff % 128)
                     throw py::value_error("I2_S needs n_embd and n_ff to be multiples of 128");
                 auto* p = new PyBitnet();
                 const int H = c.n_embd, F = c.n_ff, kvw = c.n_head_kv * (c.n_embd / c.n_head);
                 std::vector<BitnetLayer> ls;
                 int layer = 0;
                 for (auto item : layers) {
                     py::dict d = item.cast<py::dict>();
                     BitnetLayer L{};
                     L.attn_norm = ptr_of<float>(p->keep, d["attn_norm"], H, "attn_norm");
                     L.attn_sub_norm = ptr_of<float>(p->keep, d["attn_sub_norm"], H, "attn_sub_norm");
                     L.ffn_norm = ptr_of<float>(p->keep, d["ffn_norm"], H, "ffn_norm");
                     L.ffn_sub_norm = ptr_of<float>(p->keep, d["ffn_sub_norm"], F, "ffn_sub_norm");
                     L.wq = ternary_of(p->keep, d, layer, "attn_q", H, H);
                     L.wk = ternary_of(p->keep, d, layer, "attn_k", kvw, H);
                     L.wv = ternary_of(p->keep, d, layer, "attn_v", kvw, H);
                     L.wo = ternary_of(p->keep, d, layer, "attn_output", H, H);
                     L.w_gate = ternary_of(p->keep, d, layer, "ffn_gate", F, H);
                     L.w_up = ternary_of(p->keep, d, layer, "ffn_up", F, H);
                     L.w_down = ternary_of(p->keep, d, layer, "ffn_down", H, F);
                     ls.push_back(L);
                     ++layer;
                 }
                 const size_t VH = (size_t)c.n_vocab * H;
                 auto* emb = ptr_of<uint16_t>(p->keep, tok_embd, VH, "token_embd");
                 auto* onorm = ptr_of<float>(p->keep, output_norm, H, "output_norm");
                 const uint16_t* out = output.is_none() ? nullptr : ptr_of<uint16_t>(p->keep, output, VH, "output");
                 p->eng = std::make_unique<BitnetEngine>(c, std::move(ls), emb, onorm, out, n_threads);
                 return p;
             }),
             py::arg("config"), py::arg("layers"), py::arg("tok_embd"), py::arg("output_norm"),
             py::arg("output") = py::none(), py::arg("n_threads") = 1)
        .def("forward", [](PyBitnet& b, Arr<int32_t> tokens, Arr<int32_t> pos, Arr<int32_t> parents, bool logits) {
                 const int M = (int)tokens.size();
                 if (pos.size() != M || parents.size() != M)
                     throw py::value_error("tokens, positions and parents must have the same length");
                 const auto& c = b.eng->config();
                 py::array_t<float> hidden({M, c.n_embd});
                 py::object lg = py::none();
                 float* lp = nullptr;
                 if (logits) {
                     py::array_t<float> l({M, c.n_vocab});
                     lp = l.mutable_data();
                     lg = l;
                 }
                 {
                     py::gil_scoped_release nogil;
                     b.eng->forward(tokens.data(), pos.data(), parents.data(), M, hidden.mutable_data(), lp);
                 }
                 return py::make_tuple(hidden, lg);
             },
             py::arg("tokens"), py::arg("positions"), py::arg("parents"), py::arg("logits") = true)
        .def("commit", [](PyBitnet& b, Arr<int32_t> idx) { b.eng->commit(idx.data(), (int)idx.size()); })
        .def("truncate", [](PyBitnet& b, int n) { b.eng->truncate(n); })
        .def("project", [](PyBitnet& b, Arr<float> hidden) {
                 const auto& c = b.eng->config();
                 need_2d(hidden, "hidden");
                 if ((int)hidden.shape(1) != c.n_embd)
                     throw py::value_error("hidden has " + std::to_string(hidden.shape(1)) + " columns, n_embd is " +
                                           std::to_string(c.n_embd));
                 const int M = (int)hidden.shape(0);
                 py::array_t<float> l({M, c.n_vocab});
                 {
                     py::gil_scoped_release nogil;
                     b.eng->project(hidden.data(), M, l.mutable_data());
                 }
                 return l;
             },
             py::arg("hidden"), "Final-norm states [M, n_embd] -> logits [M, n_vocab].")
        .def_property_readonly("n_past", [](PyBitnet& b) { return b.eng->n_past(); });
    mod.def("ternary_sequence_timed", [](py::list weights, py::dict acts, int n_threads, int reps, py::object kernel) {
            // Median seconds of one pass of the threaded small-M kernel over every matrix in `weights` ([N, K/4]
            // uint8 each, all distinct so the pass streams from memory), with acts[K] = (q, scale, sum).
            struct Op { const uint8_t* w; int N, K; const int8_t* q; const float* s; const int32_t* sum; int M; };
            std::vector<Op> ops;
            py::list keep;
            size_t maxNM = 0;
            for (auto item : weights) {
                Arr<uint8_t> w(py::reinterpret_borrow<py::object>(item));
                need_2d(w, "weights");
                const int K = (int)w.shape(1) * 4;
                py::tuple t = acts[py::int_(K)].cast<py::tuple>();
                Arr<int8_t> q(t[0]);
                Arr<float> qs(t[1]);
                Arr<int32_t> qsum(t[2]);
                if ((int)q.shape(1) != K) throw py::value_error("activations do not fit the weights");
                keep.append(w); keep.append(q); keep.append(qs); keep.append(qsum);
                ops.push_back({w.data(), (int)w.shape(0), K, q.data(), qs.data(), qsum.data(), (int)q.shape(0)});
                maxNM = std::max(maxNM, (size_t)w.shape(0) * q.shape(0));
            }
            // the lookup kernel's weights are re-laid before timing; each matrix's inputs (VNNI's interleaved copy,
            // the lookup tables) are prepared inside the timed pass, as the engine prepares them once per input
            const int kern = kernel_of(kernel);
            std::vector<std::vector<uint8_t>> packed(ops.size());
            if (kern == KERNEL_LUT)
                for (size_t i = 0; i < ops.size(); ++i) {
                    packed[i].resize(lut_packed_bytes(ops[i].N, ops[i].K));
                    lut_pack(ops[i].w, ops[i].N, ops[i].K, packed[i].data());
                }
            KernelInputs inputs;
            ThreadPool pool(std::max(1, n_threads), ENGINE_SPIN);  // as the engine runs its matmuls
            std::vector<float> y(maxNM);
            std::vector<double> ts;
            {
                py::gil_scoped_release nogil;
                for (int r = 0; r < reps + 1; ++r) {
                    const auto t0 = std::chrono::steady_clock::now();
                    for (size_t i = 0; i < ops.size(); ++i) {
                        const Op& op = ops[i];
                        const int tasks = (op.N + 63) / 64;
                        inputs.prepare(kern, op.q, op.M, op.K);
                        pool.run(tasks, [&](int t) {
                            ternary_gemm_prepared(op.w, packed[i].data(), op.K, t * 64, std::min(op.N, t * 64 + 64),
                                                  op.N, op.q, inputs, op.s, op.sum, op.M, 1.0f, y.data());
                        });
                    }
                    if (r) ts.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
                }
            }
            std::sort(ts.begin(), ts.end());
            return ts[ts.size() / 2];
        },
        py::arg("weights"), py::arg("acts"), py::arg("n_threads") = 1, py::arg("reps") = 3,
        py::arg("kernel") = py::none());
    mod.def("ternary_gemm_tiled", [](Arr<uint8_t> w, Arr<float> wscale, Arr<int8_t> q, Arr<float> scale,
                                     Arr<int32_t> sum, py::object kernel) {
            const auto [N, K, M] = medusa_py::check_ternary_gemm(w, wscale, q, scale, sum);
            py::array_t<float> y({M, N});
            // per-row scales are applied after: the kernel takes one tensor scale, as I2_S has
            const int kern = kernel_of(kernel);
            std::vector<uint8_t> packed;
            if (kern == KERNEL_LUT) {
                packed.resize(lut_packed_bytes(N, K));
                lut_pack(w.data(), N, K, packed.data());
            }
            KernelInputs inputs;
            inputs.prepare(kern, q.data(), M, K);
            ternary_gemm_prepared(w.data(), packed.data(), K, 0, N, N, q.data(), inputs, scale.data(), sum.data(), M,
                                  1.0f, y.mutable_data());
            auto yp = y.mutable_unchecked<2>();
            for (int m = 0; m < M; ++m)
                for (int n = 0; n < N; ++n) yp(m, n) *= wscale.data()[n];
            return y;
        },
        py::arg("w"), py::arg("wscale"), py::arg("q"), py::arg("scale"), py::arg("sum"), py::arg("kernel") = py::none(),
        "The engine's small-M ternary GEMM with the given kernel (None: the process's); equals ternary_gemm.");
    mod.def("lut_pack", [](Arr<uint8_t> w) {
            need_2d(w, "I2_S weights");
            const int N = (int)w.shape(0), K = (int)w.shape(1) * 4;
            if (K % 128) throw py::value_error("I2_S rows must hold a multiple of 128 weights, got " + std::to_string(K));
            py::array_t<uint8_t> out((py::ssize_t)lut_packed_bytes(N, K));
            {
                py::gil_scoped_release nogil;
                lut_pack(w.data(), N, K, out.mutable_data());
            }
            return out;
        },
        py::arg("w"), "I2_S bytes [N, K/4] -> the lookup kernel's layout (tiles of 32 rows, 4-bit pair indices).");
    mod.def("ternary_kernels", &ternary_kernels_available,
            "The small-M ternary kernels this build and CPU run: scalar, avx2, avx512_vnni, lut.");
    mod.def("ternary_kernel", []() { return std::string(ternary_kernel_name(ternary_kernel())); },
            "The kernel the engine uses (the best available until set_ternary_kernel).");
    mod.def("set_ternary_kernel", [](std::string name) { set_ternary_kernel(kernel_of(py::str(name))); },
            py::arg("name"), "Makes the engine use this kernel; a kernel this CPU or build lacks is refused.");

    mod.def("int8_peak", [](double seconds, int n_threads, std::string instruction) {
            // Register-only multiply-add chains: the ceiling a ternary kernel using `instruction` is measured
            // against. Enough independent chains to cover the instruction's latency at its full issue rate (12 on
            // AVX2's 16 registers, 16 with AVX-512's 32), so the loop is throughput-bound. MAC/s over all threads.
            const int kind = instruction == "vpmaddubsw" ? 0 : instruction == "vpdpbusd" ? 1
                           : instruction == "vpdpbusd512" ? 2 : instruction == "vpshufb" ? 3 : -1;
            if (kind < 0) throw py::value_error("instruction must be vpmaddubsw, vpdpbusd, vpdpbusd512 or vpshufb");
#if !defined(__AVX512VNNI__) || !defined(__AVX512VL__)
            if (kind == 1 || kind == 2) throw py::value_error(instruction + " is not in this build (no AVX-512 VNNI)");
#endif
            std::vector<double> macs(std::max(1, n_threads));
            py::gil_scoped_release nogil;
            auto body = [&](int t) {
#ifdef MEDUSA_AVX2
#ifdef __AVX512F__
                constexpr int C = 16;
#else
                constexpr int C = 12;
#endif
                long iters = 0;
                const auto t0 = std::chrono::steady_clock::now();
                double el = 0;
                double per = 32;
                int sink_v = 0;
                // op applied to every chain, 4096 rounds at a time, until `seconds` have passed
                auto chains = [&](auto& acc, auto op) {
                    do {
                        for (int r = 0; r < 4096; ++r)
                            for (auto& x : acc) x = op(x);  // dependent: cannot be hoisted
                        iters += 4096;
                        el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                    } while (el < seconds);
                };
                if (kind == 3) {  // byte lookups: 32 per instruction, each table entry an index into the next
                    __m256i tbl = _mm256_setr_epi8(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0,
                                                   1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0), acc[C];
                    for (int i = 0; i < C; ++i) acc[i] = _mm256_set1_epi8((char)((i + t) & 15));
                    chains(acc, [&](__m256i x) { return _mm256_shuffle_epi8(tbl, x); });
                    for (auto& x : acc) sink_v += _mm256_extract_epi8(x, 0);
                }
                if (kind == 0) {
                    __m256i b = _mm256_set1_epi8(-2), acc[C];
                    for (int i = 0; i < C; ++i) acc[i] = _mm256_set1_epi8((char)(i + t + 3));
                    chains(acc, [&](__m256i x) { return _mm256_maddubs_epi16(x, b); });
                    for (auto& x : acc) sink_v += _mm256_extract_epi16(x, 0);
                }
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
                if (kind == 1) {
                    __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2), acc[C];
                    for (int i = 0; i < C; ++i) acc[i] = _mm256_set1_epi32(i + t);
                    chains(acc, [&](__m256i x) { return _mm256_dpbusd_epi32(x, a, b); });
                    for (auto& x : acc) sink_v += _mm256_extract_epi32(x, 0);
                }
                if (kind == 2) {
                    per = 64;
                    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2), acc[C];
                    for (int i = 0; i < C; ++i) acc[i] = _mm512_set1_epi32(i + t);
                    chains(acc, [&](__m512i x) { return _mm512_dpbusd_epi32(x, a, b); });
                    for (auto& x : acc) sink_v += _mm512_reduce_add_epi32(x);
                }
#endif
                volatile int sink = sink_v;
                (void)sink;
                macs[t] = iters * (double)C * per / el;
#else
                macs[t] = 0;
#endif
            };
            std::vector<std::thread> th;
            for (int t = 1; t < (int)macs.size(); ++t) th.emplace_back(body, t);
            body(0);
            for (auto& x : th) x.join();
            double tot = 0;
            for (double m : macs) tot += m;
            return tot;
        },
        py::arg("seconds") = 0.5, py::arg("n_threads") = 1, py::arg("instruction") = "vpmaddubsw");

    mod.def("read_bandwidth", [](double seconds, int n_threads, size_t bytes) {
            // STREAM-style read: every thread sums its own slice of one buffer far beyond the caches, with the
            // widest loads this build has; the best pass over `seconds`. Bytes/s over all threads.
            const int nt = std::max(1, n_threads);
            const size_t n = bytes / 64 * 64 / sizeof(int64_t);
            std::vector<int64_t> buf(n, 1);
            std::vector<int64_t> sums(nt);
            double best = 1e30;
            py::gil_scoped_release nogil;
            ThreadPool pool(nt);
            const auto start = std::chrono::steady_clock::now();
            do {
                const auto t0 = std::chrono::steady_clock::now();
                pool.run(nt, [&](int t) {
                    const size_t lo = n / nt * t, hi = t == nt - 1 ? n : n / nt * (t + 1);
#ifdef MEDUSA_AVX2
                    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
                    size_t i = lo;
                    for (; i + 16 <= hi; i += 16) {
                        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i*)(buf.data() + i)));
                        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i*)(buf.data() + i + 4)));
                        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i*)(buf.data() + i + 8)));
                        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i*)(buf.data() + i + 12)));
                    }
                    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
                    int64_t s = _mm256_extract_epi64(a0, 0) + _mm256_extract_epi64(a0, 1) +
                                _mm256_extract_epi64(a0, 2) + _mm256_extract_epi64(a0, 3);
                    for (; i < hi; ++i) s += buf[i];
#else
                    int64_t s = 0;
                    for (size_t i = lo; i < hi; ++i) s += buf[i];
#endif
                    sums[t] = s;
                });
                best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
            } while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds);
            int64_t tot = 0;
            for (auto v : sums) tot += v;
            if (tot != (int64_t)n) throw std::runtime_error("read_bandwidth: wrong sum");
            return (double)(n * sizeof(int64_t)) / best;
        },
        py::arg("seconds") = 0.5, py::arg("n_threads") = 1, py::arg("bytes") = (size_t)512 << 20);
}
