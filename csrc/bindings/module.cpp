// pybind11 glue: the one typed boundary between the C++ core and pccl_py. Enums are defined once in
// the core's headers and exported here as Python IntEnums (py::native_enum); results and options cross
// as bound structs with named fields; every C++ error code maps to a class of pccl_py.errors through
// that module's ERROR_CLASSES table (keyed by ErrorCode, never by a name string). The GIL is released
// around every blocking call. No logic lives here; python/pccl_py/_core.pyi describes this module to
// type checkers and must change with it.
#include <pybind11/native_enum.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "common/error.hpp"
#include "common/log.hpp"
#include "coordinator/master.hpp"
#include "kernels/codec.hpp"
#include "kernels/hash.hpp"
#include "peer/async_op.hpp"
#include "peer/communicator.hpp"
#include "peer/op_router.hpp"

namespace py = pybind11;
using namespace pccl;

namespace {

// The enums are strict at the boundary (only their own members load), but an IntEnum member still
// names a value the core may reject for this call (kCount is never exported).
void check_dtype_and_quant(DType dtype, Quant quant) {
    if (!quant_supports(quant, dtype))
        throw Error(ErrorCode::kInvalidArgument, std::string("quantization ") + quant_name(quant) +
                                                     " applies to float32 and float64 tensors only, not " +
                                                     dtype_name(dtype));
}

CollectiveSpec make_spec(uintptr_t src, uintptr_t dst, size_t count, DType dtype, ReduceOp op, uint32_t tag,
                         Algorithm algorithm, Quant quant) {
    check_dtype_and_quant(dtype, quant);
    CollectiveSpec s;
    s.src = reinterpret_cast<const uint8_t*>(src);
    s.dst = reinterpret_cast<uint8_t*>(dst);
    s.count = count;
    s.dtype = dtype;
    s.op = op;
    s.tag = tag;
    s.algorithm = algorithm;
    s.quant = quant;
    return s;
}

const char* algorithm_name(Algorithm a) {
    return a == Algorithm::kStar ? "star" : a == Algorithm::kRing ? "ring" : "p2p";
}

P2PSpec make_p2p(bool send, int peer, uintptr_t addr, size_t count, DType dtype, uint32_t tag) {
    P2PSpec s;
    s.send = send;
    s.peer = peer;
    s.src = reinterpret_cast<const uint8_t*>(addr);
    s.dst = reinterpret_cast<uint8_t*>(addr);
    s.count = count;
    s.dtype = dtype;
    s.tag = tag;
    return s;
}

ReduceResult wait_released(AsyncOp& op) {
    py::gil_scoped_release release;
    return op.wait();
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "pccl_py C++ core";

    // -- enums: the core's definitions, as IntEnums (their values are the wire and ABI codes) --------
    py::native_enum<ReduceOp>(m, "ReduceOp", "enum.IntEnum",
                              "Element-wise reduction. AVG on integers truncates toward zero after summing.")
        .value("SUM", ReduceOp::kSum)
        .value("AVG", ReduceOp::kAvg)
        .value("PROD", ReduceOp::kProd)
        .value("MIN", ReduceOp::kMin)
        .value("MAX", ReduceOp::kMax)
        .finalize();
    // kP2P marks send/recv on the wire; it is not an algorithm a caller can pick, so it is not exported
    // (results name their algorithm as a string, see ReduceResult.algorithm).
    py::native_enum<Algorithm>(m, "Algorithm", "enum.IntEnum",
                               "All-reduce algorithm. AUTO picks STAR up to 64 KiB and RING above.")
        .value("AUTO", Algorithm::kAuto)
        .value("RING", Algorithm::kRing)
        .value("STAR", Algorithm::kStar)
        .finalize();
    py::native_enum<DType>(m, "DataType", "enum.IntEnum", "Element type of a buffer (csrc/kernels/dtype.hpp).")
        .value("INT8", DType::kInt8)
        .value("UINT8", DType::kUInt8)
        .value("INT16", DType::kInt16)
        .value("UINT16", DType::kUInt16)
        .value("INT32", DType::kInt32)
        .value("UINT32", DType::kUInt32)
        .value("INT64", DType::kInt64)
        .value("UINT64", DType::kUInt64)
        .value("FLOAT16", DType::kFloat16)
        .value("BFLOAT16", DType::kBFloat16)
        .value("FLOAT32", DType::kFloat32)
        .value("FLOAT64", DType::kFloat64)
        .finalize();
    py::native_enum<Quant>(m, "Quantization", "enum.IntEnum",
                           "Wire format of an all-reduce's payload (csrc/kernels/codec.hpp, docs/quantization.md).")
        .value("NONE", Quant::kNone)
        .value("FP16", Quant::kFp16)
        .value("BF16", Quant::kBf16)
        .value("Q8", Quant::kQ8)
        .value("Q4", Quant::kQ4)
        .finalize();
    py::native_enum<LogLevel>(m, "LogLevel", "enum.IntEnum", "Verbosity of the core's stderr log.")
        .value("DEBUG", LogLevel::kDebug)
        .value("INFO", LogLevel::kInfo)
        .value("WARN", LogLevel::kWarn)
        .value("ERROR", LogLevel::kError)
        .value("OFF", LogLevel::kOff)
        .finalize();
    py::native_enum<ErrorCode>(m, "ErrorCode", "enum.IntEnum",
                               "Why the core failed a call; pccl_py.errors.ERROR_CLASSES maps each to an exception.")
        .value("INVALID_ARGUMENT", ErrorCode::kInvalidArgument)
        .value("PEER_LOST", ErrorCode::kPeerLost)
        .value("TIMEOUT", ErrorCode::kTimeout)
        .value("MASTER_LOST", ErrorCode::kMasterLost)
        .value("EVICTED", ErrorCode::kEvicted)
        .value("MISMATCH", ErrorCode::kMismatch)
        .value("CLOSED", ErrorCode::kClosed)
        .value("PROTOCOL", ErrorCode::kProtocol)
        .value("IO", ErrorCode::kIo)
        .value("AUTH", ErrorCode::kAuth)
        .finalize();

    // The class is looked up per error (errors are rare), so pccl_py.errors stays the one place that
    // decides which exception a code raises; a code missing from its table raises PCCLError.
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const Error& e) {
            py::object errors = py::module_::import("pccl_py.errors");
            py::object cls = errors.attr("ERROR_CLASSES").attr("get")(py::cast(e.code()), errors.attr("PCCLError"));
            PyErr_SetString(cls.ptr(), e.what());
        }
    });

    // -- results and options --------------------------------------------------------------------
    py::class_<ReduceResult>(m, "ReduceResult", "What one op did on this peer (built by the core, read-only).")
        .def_readonly("world_size", &ReduceResult::world_size)
        .def_readonly("rank", &ReduceResult::rank)
        .def_readonly("tx_bytes", &ReduceResult::tx_bytes)
        .def_readonly("rx_bytes", &ReduceResult::rx_bytes)
        .def_readonly("swapped_bytes", &ReduceResult::swapped_bytes)
        .def_property_readonly("algorithm", [](const ReduceResult& r) { return algorithm_name(r.algorithm); })
        .def_readonly("epoch", &ReduceResult::epoch)
        .def_readonly("retries", &ReduceResult::retries)
        .def_readonly("peers_pending", &ReduceResult::peers_pending);

    // CommConfig under the name Python code uses; defaults come from the struct itself.
    const CommConfig comm_defaults{};
    py::class_<CommConfig>(m, "CommunicatorOptions", "Everything a Communicator is configured with (keywords only).")
        .def(py::init([](std::string master_address, uint32_t group, int connections, double timeout,
                         double heartbeat_timeout, double join_timeout, std::string listen_host, uint16_t listen_port,
                         std::string advertise_host, uint16_t advertise_port, double master_grace,
                         bool swap_result_pages, py::bytes secret, bool encrypt) {
                 CommConfig c;
                 c.master_address = std::move(master_address);
                 c.group = group;
                 c.connections = connections;
                 c.timeout = timeout;
                 c.heartbeat_timeout = heartbeat_timeout;
                 c.join_timeout = join_timeout;
                 c.listen_host = std::move(listen_host);
                 c.listen_port = listen_port;
                 c.advertise_host = std::move(advertise_host);
                 c.advertise_port = advertise_port;
                 c.master_grace = master_grace;
                 c.swap_result_pages = swap_result_pages;
                 c.secret = std::string(secret);
                 c.encrypt = encrypt;
                 return c;
             }),
             py::kw_only(), py::arg("master_address"), py::arg("group") = comm_defaults.group,
             py::arg("connections") = comm_defaults.connections, py::arg("timeout") = comm_defaults.timeout,
             py::arg("heartbeat_timeout") = comm_defaults.heartbeat_timeout,
             py::arg("join_timeout") = comm_defaults.join_timeout, py::arg("listen_host") = comm_defaults.listen_host,
             py::arg("listen_port") = comm_defaults.listen_port,
             py::arg("advertise_host") = comm_defaults.advertise_host,
             py::arg("advertise_port") = comm_defaults.advertise_port,
             py::arg("master_grace") = comm_defaults.master_grace,
             py::arg("swap_result_pages") = comm_defaults.swap_result_pages, py::arg("secret") = py::bytes(),
             py::arg("encrypt") = comm_defaults.encrypt)
        .def_readonly("master_address", &CommConfig::master_address)
        .def_readonly("group", &CommConfig::group)
        .def_readonly("connections", &CommConfig::connections)
        .def_readonly("timeout", &CommConfig::timeout)
        .def_readonly("heartbeat_timeout", &CommConfig::heartbeat_timeout)
        .def_readonly("join_timeout", &CommConfig::join_timeout)
        .def_readonly("listen_host", &CommConfig::listen_host)
        .def_readonly("listen_port", &CommConfig::listen_port)
        .def_readonly("advertise_host", &CommConfig::advertise_host)
        .def_readonly("advertise_port", &CommConfig::advertise_port)
        .def_readonly("master_grace", &CommConfig::master_grace)
        .def_readonly("swap_result_pages", &CommConfig::swap_result_pages)
        .def_readonly("encrypt", &CommConfig::encrypt);  // the secret is not readable back

    const MasterLimits limit_defaults{};
    py::class_<MasterLimits>(m, "MasterLimits", "A master's resource limits (docs/security.md); keywords only.")
        .def(py::init([](double handshake_timeout, uint32_t max_unauthenticated, uint32_t max_unauthenticated_per_source,
                         uint64_t max_preauth_bytes, uint32_t max_pending_per_group, uint32_t max_group_size) {
                 MasterLimits l;
                 l.handshake_timeout = handshake_timeout;
                 l.max_unauthenticated = max_unauthenticated;
                 l.max_unauthenticated_per_source = max_unauthenticated_per_source;
                 l.max_preauth_bytes = max_preauth_bytes;
                 l.max_pending_per_group = max_pending_per_group;
                 l.max_group_size = max_group_size;
                 return l;
             }),
             py::kw_only(), py::arg("handshake_timeout") = limit_defaults.handshake_timeout,
             py::arg("max_unauthenticated") = limit_defaults.max_unauthenticated,
             py::arg("max_unauthenticated_per_source") = limit_defaults.max_unauthenticated_per_source,
             py::arg("max_preauth_bytes") = limit_defaults.max_preauth_bytes,
             py::arg("max_pending_per_group") = limit_defaults.max_pending_per_group,
             py::arg("max_group_size") = limit_defaults.max_group_size)
        .def_readonly("handshake_timeout", &MasterLimits::handshake_timeout)
        .def_readonly("max_unauthenticated", &MasterLimits::max_unauthenticated)
        .def_readonly("max_unauthenticated_per_source", &MasterLimits::max_unauthenticated_per_source)
        .def_readonly("max_preauth_bytes", &MasterLimits::max_preauth_bytes)
        .def_readonly("max_pending_per_group", &MasterLimits::max_pending_per_group)
        .def_readonly("max_group_size", &MasterLimits::max_group_size);

    // -- free functions ---------------------------------------------------------------------------
    m.def("set_log_level", [](LogLevel level) { set_log_level(level); }, py::arg("level"));
    // For tests: feeds `frames` well-formed frame headers of `length` payload bytes, for operations not
    // started (tag 1, seq 1, 2, ...), to a fresh data-frame router, as a member far ahead would send
    // them; returns how many it held before refusing one, and its reason ("" if none was refused).
    m.def("_router_hold_probe", [](uint64_t frames, uint32_t length) {
        uint64_t held = 0;
        std::string why;
        {
        py::gil_scoped_release release;
        OpRouter router([](int, const std::string&) {});
        std::vector<uint8_t> payload(length, 0x5a);
        for (uint64_t i = 0; i < frames; ++i) {
            FrameHeader h{};
            h.magic = kFrameMagic;
            h.type = static_cast<uint8_t>(length ? FrameType::kData : FrameType::kDone);
            h.tag = 1;
            h.seq = i + 1;
            h.count = length;
            h.length = length;
            try {
                RecvTarget t = router.on_header(0, h);
                if (length && t.dst) std::memcpy(t.dst, payload.data(), length);
                router.on_frame(0, h, t);
            } catch (const ProtocolError& e) {
                why = e.what();
                break;
            }
            ++held;
        }
        }
        return py::make_tuple(held, why);
    }, py::arg("frames"), py::arg("length"));
    m.def("content_hash", [](uintptr_t addr, size_t bytes) { return content_hash(reinterpret_cast<const void*>(addr), bytes); }, py::arg("addr"), py::arg("nbytes"),
          py::call_guard<py::gil_scoped_release>());
    m.def("copy_bytes", [](uintptr_t dst, uintptr_t src, size_t bytes) {
        if (bytes) std::memcpy(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
    }, py::arg("dst"), py::arg("src"), py::arg("nbytes"), py::call_guard<py::gil_scoped_release>());

    // dst = decode(encode(src)), blocks starting at src[0]: what error feedback subtracts. dst may be src.
    m.def("quantize_roundtrip", [](Quant quant, DType dtype, uintptr_t src, uintptr_t dst, size_t count) {
        check_dtype_and_quant(dtype, quant);
        py::gil_scoped_release release;
        quantize_roundtrip(quant, dtype, reinterpret_cast<const void*>(src), count, reinterpret_cast<void*>(dst));
    }, py::arg("quantization"), py::arg("dtype"), py::arg("src_ptr"), py::arg("dst_ptr"), py::arg("count"));

    // -- objects ----------------------------------------------------------------------------------
    py::class_<Master>(m, "Master")
        .def(py::init([](std::string host, uint16_t port, py::bytes secret, bool encrypt, const MasterLimits& limits) {
                 return std::make_unique<Master>(std::move(host), port, std::string(secret), encrypt, limits);
             }),
             py::arg("host"), py::arg("port"), py::kw_only(), py::arg("secret") = py::bytes(),
             py::arg("encrypt") = false, py::arg("limits") = MasterLimits{})
        .def("start", &Master::start, py::call_guard<py::gil_scoped_release>())
        .def("stop", &Master::stop, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("port", &Master::port)
        .def_property_readonly("host", &Master::host);

    py::class_<AsyncOp>(m, "AsyncOp")
        .def("done", &AsyncOp::done)
        .def("wait", &wait_released);

    py::class_<Communicator>(m, "Communicator")
        .def(py::init([](CommConfig options) { return std::make_unique<Communicator>(std::move(options)); }),
             py::arg("options"))
        .def("connect", &Communicator::connect, py::call_guard<py::gil_scoped_release>())
        .def("update_topology", &Communicator::update_topology, py::call_guard<py::gil_scoped_release>())
        .def("are_peers_pending", &Communicator::peers_pending)
        .def("close", &Communicator::close, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("world_size", &Communicator::world_size)
        .def_property_readonly("rank", &Communicator::rank)
        .def_property_readonly("epoch", &Communicator::epoch)
        .def_property_readonly("peer_id", &Communicator::peer_id)
        .def("check_usable", [](Communicator& c, const std::string& what) { c.check_usable(what.c_str()); },
             py::arg("what"))
        // Fault injection for tests/security/test_hostile.py: a FAILURE report as a malicious member would send it.
        .def("_send_failure_report", &Communicator::send_failure_report, py::arg("epoch"), py::arg("kind"), py::arg("suspect"))
        .def("all_reduce",
             [](Communicator& c, uintptr_t src, uintptr_t dst, size_t count, DType dtype, ReduceOp op, uint32_t tag,
                Algorithm algorithm, Quant quant) {
                 CollectiveSpec s = make_spec(src, dst, count, dtype, op, tag, algorithm, quant);
                 py::gil_scoped_release release;
                 return c.all_reduce(s);
             },
             py::arg("src"), py::arg("dst"), py::arg("count"), py::arg("dtype"), py::arg("op"), py::arg("tag"),
             py::arg("algorithm"), py::arg("quantization"))
        .def("all_reduce_async",
             [](Communicator& c, uintptr_t src, uintptr_t dst, size_t count, DType dtype, ReduceOp op, uint32_t tag,
                Algorithm algorithm, Quant quant) {
                 CollectiveSpec s = make_spec(src, dst, count, dtype, op, tag, algorithm, quant);
                 return std::make_unique<AsyncOp>(c, s);
             },
             py::arg("src"), py::arg("dst"), py::arg("count"), py::arg("dtype"), py::arg("op"), py::arg("tag"),
             py::arg("algorithm"), py::arg("quantization"), py::keep_alive<0, 1>())
        // send=True: addr is the message; False: where it is published. peer: rank in the current epoch
        // (or in planned_epoch, when that is not 0).
        .def("p2p",
             [](Communicator& c, bool send, int peer, uintptr_t addr, size_t count, DType dtype, uint32_t tag,
                uint64_t planned_epoch) {
                 P2PSpec s = make_p2p(send, peer, addr, count, dtype, tag);
                 s.planned_epoch = planned_epoch;
                 py::gil_scoped_release release;
                 return c.p2p(s);
             },
             py::arg("send"), py::arg("peer"), py::arg("addr"), py::arg("count"), py::arg("dtype"), py::arg("tag"),
             py::arg("planned_epoch") = 0)
        .def("p2p_async",
             [](Communicator& c, bool send, int peer, uintptr_t addr, size_t count, DType dtype, uint32_t tag,
                uint64_t planned_epoch) {
                 P2PSpec s = make_p2p(send, peer, addr, count, dtype, tag);
                 s.planned_epoch = planned_epoch;
                 return std::make_unique<AsyncOp>(c, s);
             },
             py::arg("send"), py::arg("peer"), py::arg("addr"), py::arg("count"), py::arg("dtype"), py::arg("tag"),
             py::arg("planned_epoch") = 0, py::keep_alive<0, 1>());
}
