/* One subscriber's copy of an RTP packet, patched, protected and sent in one call.
 *
 * The pure-Python path (media/rtpcopy.py, media/aiortc_adapter.py) does the same in several
 * calls and copies; this is its twin for the per-copy cost of a forwarding unit. The SRTP
 * session is the one aiortc's DTLS transport made (libsrtp inside pylibsrtp): its address and
 * the address of libsrtp's srtp_protect are handed over from Python, so this module links to
 * no library and the session's state (rollover counter, replay list) stays one.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

/* libsrtp 2: srtp_err_status_t srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr). */
typedef int (*protect_fn)(void *ctx, void *rtp, int *len);

/* Room for the largest packet we forward and libsrtp's longest trailer (tag and MKI). */
#define BUFFER 4096
#define TRAILER 144

static protect_fn protect = NULL;

static PyObject *bind_protect(PyObject *self, PyObject *arg) {
    unsigned long long address = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    protect = (protect_fn)(uintptr_t)address;
    Py_RETURN_NONE;
}

static PyObject *sockaddr(PyObject *self, PyObject *args) {
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "si", &host, &port))
        return NULL;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    if (inet_pton(AF_INET, host, &v4.sin_addr) == 1) {
        v4.sin_family = AF_INET;
        v4.sin_port = htons((uint16_t)port);
        return PyBytes_FromStringAndSize((const char *)&v4, sizeof v4);
    }
    if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1) {
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons((uint16_t)port);
        return PyBytes_FromStringAndSize((const char *)&v6, sizeof v6);
    }
    PyErr_SetString(PyExc_ValueError, "not a numeric address");
    return NULL;
}

/* An optional argument: -1 (or None) when absent, else an integer. */
static int optional(PyObject *o, long long *out) {
    if (o == Py_None) {
        *out = -1;
        return 0;
    }
    *out = PyLong_AsLongLong(o);
    return PyErr_Occurred() ? -1 : 0;
}

/* copy(fd, sockaddr, session, template, marker_pt, seq, timestamp,
 *      abs_at, abs_value, tcc_at, tcc_value, vad_at, vad_value, payload)
 * -> (copy: bytes, sent: int)
 *
 * `copy` is the unprotected packet (kept to answer NACKs); `sent` the protected length given
 * to the socket, or -1 when the socket did not take it (full buffer, unreachable peer): a
 * datagram lost like any other, repaired by NACK. An *_at of -1 or None leaves that value out.
 */
static PyObject *copy(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "copy() takes 14 arguments");
        return NULL;
    }
    if (protect == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "bind_protect() first");
        return NULL;
    }
    long long fd, session, marker_pt, seq, ts, at[3], value[3];
    fd = PyLong_AsLongLong(args[0]);
    session = PyLong_AsLongLong(args[2]);
    marker_pt = PyLong_AsLongLong(args[4]);
    seq = PyLong_AsLongLong(args[5]);
    ts = PyLong_AsLongLong(args[6]);
    if (PyErr_Occurred())
        return NULL;
    for (int i = 0; i < 3; i++)
        if (optional(args[7 + 2 * i], &at[i]) < 0 || optional(args[8 + 2 * i], &value[i]) < 0)
            return NULL;
    char *addr, *header, *payload;
    Py_ssize_t addr_len, header_len, payload_len;
    if (PyBytes_AsStringAndSize(args[1], &addr, &addr_len) < 0 ||
        PyBytes_AsStringAndSize(args[3], &header, &header_len) < 0 ||
        PyBytes_AsStringAndSize(args[13], &payload, &payload_len) < 0)
        return NULL;
    if (header_len < 12 || header_len + payload_len > BUFFER - TRAILER) {
        PyErr_SetString(PyExc_ValueError, "packet too long or header too short");
        return NULL;
    }
    unsigned char buf[BUFFER];
    memcpy(buf, header, header_len);
    memcpy(buf + header_len, payload, payload_len);
    buf[1] = (unsigned char)marker_pt;
    buf[2] = (unsigned char)(seq >> 8);
    buf[3] = (unsigned char)seq;
    buf[4] = (unsigned char)(ts >> 24);
    buf[5] = (unsigned char)(ts >> 16);
    buf[6] = (unsigned char)(ts >> 8);
    buf[7] = (unsigned char)ts;
    /* abs-send-time: 3 bytes; transport-wide sequence number: 2; audio level: 1. */
    static const int width[3] = {3, 2, 1};
    for (int i = 0; i < 3; i++) {
        if (at[i] < 0 || value[i] < 0)
            continue;
        if (at[i] + width[i] > header_len) {
            PyErr_SetString(PyExc_ValueError, "extension offset outside the header");
            return NULL;
        }
        for (int b = 0; b < width[i]; b++)
            buf[at[i] + b] = (unsigned char)(value[i] >> (8 * (width[i] - 1 - b)));
    }
    int length = (int)(header_len + payload_len);
    PyObject *plain = PyBytes_FromStringAndSize((const char *)buf, length);
    if (plain == NULL)
        return NULL;
    int rc = protect((void *)(uintptr_t)session, buf, &length);
    if (rc != 0) {
        Py_DECREF(plain);
        PyErr_Format(PyExc_RuntimeError, "srtp_protect failed (%d)", rc);
        return NULL;
    }
    ssize_t sent = sendto((int)fd, buf, (size_t)length, MSG_DONTWAIT, (struct sockaddr *)addr,
                          (socklen_t)addr_len);
    return Py_BuildValue("(Nn)", plain, (Py_ssize_t)(sent < 0 ? -1 : length));
}

static PyMethodDef methods[] = {
    {"bind_protect", bind_protect, METH_O, "Use the srtp_protect at this address."},
    {"sockaddr", sockaddr, METH_VARARGS, "Return a numeric address and port as a sockaddr."},
    {"copy", (PyCFunction)(void (*)(void))copy, METH_FASTCALL,
     "Patch, protect and send one subscriber's copy of an RTP packet."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastcopy", "Per-copy forwarding in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__fastcopy(void) { return PyModule_Create(&module); }
