/* fastmsg.c -- pylog._fastmsg: build pylog.message.Message objects in C.
 *
 * Consumer._decode_batches calls decode_messages() once per (uncompressed or
 * already decompressed) records region.  The Python loop it replaces runs
 * pl_decode_records, unpacks 8 int64 per record into Python ints, slices key
 * and value and calls Message.__init__ with 9 arguments; here one pass over
 * the bytes validates each record and fills a Message directly.
 *
 * Instances.  The Message class is the C type of message_type.c (the
 * Python class of message.py is the fallback, used with the Python loop):
 * decode_messages() fills its fields directly, as Message.__init__ would
 * (tstype is TIMESTAMP_NOT_AVAILABLE when the timestamp is negative), and
 * leaves it untracked by the cyclic collector unless it has headers.
 *
 * Bounds.  The bytes come from disk.  The checks are those of
 * pl_decode_records/walk_headers in batch.c, written again here (batch.c is
 * not linked into this module): count * 7 (the smallest record) must fit in
 * the region before anything is allocated for it; every varint is read
 * against the end of its record (its length against the region), with at
 * most 5 bytes and the int32 range for lengths, counts and offset deltas and
 * at most 10 bytes for the timestamp delta; a record's length is at least 6
 * and within the region, its key, value, header keys and header values lie
 * inside it (lengths >= -1, header key lengths >= 0), its header count is at
 * most half its remaining bytes, it ends exactly where its length says, and
 * the last record ends exactly at the end of the region.  Offsets and
 * timestamps are added in uint64 (garbage wraps, as in C, no UB).  The
 * caps of pylog._bridge.decode_records/decode_headers apply too (read from
 * _bridge at import): a batch of more than MAX_BATCH_RECORDS records, or a
 * record handed out with more than MAX_RECORD_HEADERS headers, is refused,
 * so a small compressed batch cannot make gigabytes of objects.
 *
 * Errors.  Damaged bytes raise pylog.errors.CorruptRecordError; bad
 * arguments raise TypeError/ValueError; allocation failures MemoryError.
 * The messages of one call are kept in a private array and spliced into the
 * caller's list in one list operation at the end, so on any error the list
 * is left exactly as it was.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "message_type.h"
#include "wire.h"

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif
#ifndef Py_READONLY
#define Py_READONLY READONLY
#endif

#define MIN_RECORD_SIZE 7           /* pylog.h PL_MIN_RECORD_SIZE */
#define TIMESTAMP_NOT_AVAILABLE 0   /* pylog.message */
#define TIMESTAMP_CREATE_TIME 1
#define TIMESTAMP_LOG_APPEND_TIME 2

static PyObject *CorruptRecordError;   /* pylog.errors.CorruptRecordError */
/* pylog._bridge.MAX_BATCH_RECORDS and MAX_RECORD_HEADERS, read at import so
 * both decode paths refuse the same counts (INT64_MAX when _bridge has none). */
static int64_t max_batch_records = INT64_MAX, max_record_headers = INT64_MAX;

/* ---- bounded readers ---- */

/* Zigzag varint of at most max_bytes (5: the int32 range, 10: int64) from
 * p[0..avail).  Returns the bytes read, 0 if it runs past avail, is longer
 * than max_bytes or (max_bytes 5) leaves the int32 range. */
static inline Py_ssize_t read_varint(const uint8_t *p, Py_ssize_t avail, int max_bytes, int64_t *out)
{
    return (Py_ssize_t)get_varint(p, p + avail, (size_t)max_bytes, out);
}

/* Why a region is rejected: set by the parsers, reported by decode_messages(). */
typedef struct {
    const char *what;
    Py_ssize_t record;
    Py_ssize_t at;          /* byte position in the region */
} damage_t;

#define DAMAGED(msg) do { dmg->what = (msg); dmg->at = p - region; return -1; } while (0)

/* Walk hcount headers in [p, end).  With list != NULL, append the
 * (str, bytes or None) tuples to it.  Returns 0 with *next set, -1 for
 * damaged bytes (dmg filled, no exception) or -2 with an exception set. */
static int walk_headers(const uint8_t *region, const uint8_t *p, const uint8_t *end,
                        int64_t hcount, PyObject *list, const uint8_t **next, damage_t *dmg)
{
    for (int64_t i = 0; i < hcount; i++) {
        int64_t klen, vlen;
        Py_ssize_t k = read_varint(p, end - p, 5, &klen);
        if (!k || klen < 0 || klen > (end - p) - k)
            DAMAGED("header key length out of range");
        p += k;
        const uint8_t *key = p;
        p += klen;
        k = read_varint(p, end - p, 5, &vlen);
        if (!k || vlen < -1)
            DAMAGED("header value length out of range");
        p += k;
        if (vlen > end - p)
            DAMAGED("header value runs past the record");
        const uint8_t *value = p;
        if (vlen > 0)
            p += vlen;
        if (list != NULL) {
            PyObject *ks = PyUnicode_DecodeUTF8((const char *)key, (Py_ssize_t)klen, "replace");
            if (ks == NULL)
                return -2;
            PyObject *vb;
            if (vlen < 0) {
                vb = Py_None;
                Py_INCREF(vb);
            } else if ((vb = PyBytes_FromStringAndSize((const char *)value, (Py_ssize_t)vlen)) == NULL) {
                Py_DECREF(ks);
                return -2;
            }
            PyObject *pair = PyTuple_New(2);
            if (pair == NULL) {
                Py_DECREF(ks);
                Py_DECREF(vb);
                return -2;
            }
            PyTuple_SET_ITEM(pair, 0, ks);
            PyTuple_SET_ITEM(pair, 1, vb);
            int rc = PyList_Append(list, pair);
            Py_DECREF(pair);
            if (rc < 0)
                return -2;
        }
    }
    *next = p;
    return 0;
}

/* ---- decode_messages ---- */

typedef struct {
    int64_t count, base_offset, base_timestamp, first_offset, max_timestamp;
    int tstype;
    PyObject *topic, *partition;
} batch_args;

/* Decode the records of region[0..len) into msgs (capacity args->count),
 * *n of them.  Returns 0, -1 for damaged bytes (dmg filled) or -2 with an
 * exception set.  msgs[0..*n) hold references either way. */
static int decode_region(const uint8_t *region, Py_ssize_t len,
                         const batch_args *a, PyObject **msgs, Py_ssize_t *n, damage_t *dmg)
{
    const uint8_t *p = region, *end = region + len;
    PyObject *ts_obj = NULL;
    int64_t ts_cur = 0;
    int rc = -2;
    for (int64_t r = 0; r < a->count; r++) {
        int64_t body, ts_delta, off_delta, klen, vlen, hcount;
        Py_ssize_t k;
        dmg->record = (Py_ssize_t)r;
        k = read_varint(p, end - p, 5, &body);
        if (!k || body < MIN_RECORD_SIZE - 1 || body > (end - p) - k) {
            dmg->what = "record length out of range";
            goto damaged;
        }
        p += k;
        const uint8_t *rend = p + body;
        p++;                                    /* attributes (body >= 6) */
        if (!(k = read_varint(p, rend - p, 10, &ts_delta))) {
            dmg->what = "bad timestamp delta";
            goto damaged;
        }
        p += k;
        if (!(k = read_varint(p, rend - p, 5, &off_delta)) || off_delta < 0) {
            dmg->what = "bad offset delta";
            goto damaged;
        }
        p += k;
        if (!(k = read_varint(p, rend - p, 5, &klen)) || klen < -1 || klen > (rend - p) - k) {
            dmg->what = "key length out of range";
            goto damaged;
        }
        p += k;
        const uint8_t *key = p;
        if (klen > 0)
            p += klen;
        if (!(k = read_varint(p, rend - p, 5, &vlen)) || vlen < -1 || vlen > (rend - p) - k) {
            dmg->what = "value length out of range";
            goto damaged;
        }
        p += k;
        const uint8_t *value = p;
        if (vlen > 0)
            p += vlen;
        /* (the bound is taken before the count's own bytes, as batch.c does;
         * the header walk below needs 2 bytes a header anyway) */
        if (!(k = read_varint(p, rend - p, 5, &hcount)) || hcount < 0 || hcount > (rend - p) / 2) {
            dmg->what = "header count out of range";
            goto damaged;
        }
        p += k;
        int64_t offset = (int64_t)((uint64_t)a->base_offset + (uint64_t)off_delta);
        int wanted = offset >= a->first_offset;
        if (wanted && hcount > max_record_headers) {   /* as _bridge.decode_headers */
            PyErr_Format(CorruptRecordError, "record with %lld headers is over pylog's limit of %lld",
                         (long long)hcount, (long long)max_record_headers);
            goto out;
        }
        PyObject *headers = NULL;
        if (wanted && hcount > 0 && (headers = PyList_New(0)) == NULL)
            goto out;
        const uint8_t *after;
        int hrc = walk_headers(region, p, rend, hcount, headers, &after, dmg);
        if (hrc == 0 && after != rend) {
            p = after;
            dmg->what = "record has bytes after its headers";
            dmg->at = p - region;
            hrc = -1;
        }
        if (hrc) {
            Py_XDECREF(headers);
            if (hrc == -1) {
                dmg->record = (Py_ssize_t)r;
                rc = -1;
            }
            goto out;
        }
        p = rend;
        if (!wanted)
            continue;
        /* Build the instance: every field is set before anything can fail,
         * so a failure's DECREF sees a whole message. */
        pl_Message *m = pl_message_alloc();
        if (m == NULL) {
            Py_XDECREF(headers);
            goto out;
        }
        int64_t ts = a->tstype == TIMESTAMP_LOG_APPEND_TIME ? a->max_timestamp
                     : (int64_t)((uint64_t)a->base_timestamp + (uint64_t)ts_delta);
        if (ts_obj == NULL || ts != ts_cur) {   /* records of a batch often share one */
            Py_XDECREF(ts_obj);
            ts_obj = PyLong_FromLongLong(ts);
            ts_cur = ts;
        }
        m->topic = Py_NewRef(a->topic);
        m->partition = Py_NewRef(a->partition);
        m->offset = NULL;
        m->offset_v = offset;
        m->headers = headers;
        m->timestamp = Py_XNewRef(ts_obj);
        m->tstype = ts >= 0 ? a->tstype : TIMESTAMP_NOT_AVAILABLE;
        m->error = m->latency = m->leader_epoch = NULL;
        m->key = klen < 0 ? NULL : PyBytes_FromStringAndSize((const char *)key, (Py_ssize_t)klen);
        m->value = vlen < 0 ? NULL : PyBytes_FromStringAndSize((const char *)value, (Py_ssize_t)vlen);
        if (ts_obj == NULL || (klen >= 0 && m->key == NULL) || (vlen >= 0 && m->value == NULL)) {
            Py_DECREF(m);
            goto out;
        }
        /* Untracked, as CPython untracks a tuple of atoms: with no headers
         * list every field holds an atom (str, int, bytes, None), so the
         * message cannot be part of a cycle and the cyclic collector need
         * not visit it (it did: about a third of consume()'s time).
         * set_key/set_value/set_headers track it again. */
        if (headers != NULL)
            PyObject_GC_Track(m);
        msgs[(*n)++] = (PyObject *)m;
    }
    if (p != end) {
        dmg->record = (Py_ssize_t)a->count;
        dmg->what = "bytes left after the last record";
        goto damaged;
    }
    rc = 0;
    goto out;
damaged:
    dmg->at = p - region;
    rc = -1;
out:
    Py_XDECREF(ts_obj);
    return rc;
}

static int arg_int64(PyObject *o, const char *name, int64_t *out)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s is outside the int64 range", name);
        }
        return -1;
    }
    *out = (int64_t)v;
    return 0;
}

PyDoc_STRVAR(decode_messages_doc,
"decode_messages(cls, out, buf, start, end, count, base_offset, base_timestamp,\n"
"                topic, partition, first_offset, tstype, max_timestamp) -> int\n"
"\n"
"Decode the `count` records of one batch held in buf[start:end] (its\n"
"uncompressed records region) and append a `cls` (pylog.message.Message)\n"
"instance to the list `out` for each record whose offset is >= first_offset.\n"
"tstype is 1 (CreateTime: base_timestamp + the record's delta) or 2\n"
"(LogAppendTime: max_timestamp for every record); a negative timestamp gets\n"
"TIMESTAMP_NOT_AVAILABLE, as Message.__init__ does.  Returns the number of\n"
"messages appended.  Damaged bytes raise CorruptRecordError and leave `out`\n"
"unchanged.");

static PyObject *decode_messages(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 13) {
        PyErr_Format(PyExc_TypeError, "decode_messages() takes 13 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *cls_obj = args[0], *out = args[1], *bufobj = args[2];
    batch_args a;
    int64_t start, stop, tstype;
    if (cls_obj != (PyObject *)&pl_MessageType) {
        PyErr_SetString(PyExc_TypeError, "cls must be pylog._fastmsg.Message");
        return NULL;
    }
    if (!PyList_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "out must be a list");
        return NULL;
    }
    if (arg_int64(args[3], "start", &start) || arg_int64(args[4], "end", &stop) ||
        arg_int64(args[5], "count", &a.count) || arg_int64(args[6], "base_offset", &a.base_offset) ||
        arg_int64(args[7], "base_timestamp", &a.base_timestamp) ||
        arg_int64(args[10], "first_offset", &a.first_offset) ||
        arg_int64(args[11], "tstype", &tstype) ||
        arg_int64(args[12], "max_timestamp", &a.max_timestamp))
        return NULL;
    if (tstype != TIMESTAMP_CREATE_TIME && tstype != TIMESTAMP_LOG_APPEND_TIME) {
        PyErr_Format(PyExc_ValueError, "tstype must be 1 (CreateTime) or 2 (LogAppendTime), not %lld",
                     (long long)tstype);
        return NULL;
    }
    a.tstype = (int)tstype;
    a.topic = args[8];
    a.partition = args[9];

    Py_buffer view;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL, *batch = NULL;
    PyObject **msgs = NULL;
    Py_ssize_t n = 0, len, size;
    damage_t dmg = {NULL, 0, 0};
    int rc;
    if (!(0 <= start && start <= stop && stop <= (int64_t)view.len)) {
        PyErr_Format(PyExc_ValueError, "window [%lld, %lld) is outside the %zd-byte buffer",
                     (long long)start, (long long)stop, view.len);
        goto done;
    }
    len = (Py_ssize_t)(stop - start);
    /* Checked before anything is allocated for count (as decode_records does). */
    if (a.count < 0 || a.count > len / MIN_RECORD_SIZE) {
        PyErr_Format(CorruptRecordError, "record count %lld does not fit in %zd bytes",
                     (long long)a.count, len);
        goto done;
    }
    if (a.count > max_batch_records) {
        PyErr_Format(CorruptRecordError, "batch of %lld records is over pylog's limit of %lld "
                     "records per batch", (long long)a.count, (long long)max_batch_records);
        goto done;
    }
    if (a.count > 0 && (msgs = PyMem_New(PyObject *, (size_t)a.count)) == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    rc = decode_region((const uint8_t *)view.buf + start, len, &a, msgs, &n, &dmg);
    if (rc == -1) {
        PyErr_Format(CorruptRecordError,
                     "decode records: record fields are inconsistent (%s: record %zd of %lld, "
                     "byte %zd of %zd)", dmg.what, dmg.record, (long long)a.count, dmg.at, len);
        goto done;
    }
    if (rc < 0)
        goto done;
    /* Splice into out in one step: it either grows by n or stays as it was
     * (the result is made first, so nothing can fail after the splice). */
    if ((result = PyLong_FromSsize_t(n)) == NULL || (batch = PyList_New(n)) == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++)
        PyList_SET_ITEM(batch, i, msgs[i]);     /* steals */
    n = 0;
    size = PyList_GET_SIZE(out);
    if (PyList_SetSlice(out, size, size, batch) < 0)
        goto fail;
    goto done;
fail:
    Py_CLEAR(result);
done:
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(msgs[i]);
    PyMem_Free(msgs);
    Py_XDECREF(batch);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"decode_messages", (PyCFunction)(void (*)(void))decode_messages, METH_FASTCALL,
     decode_messages_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "pylog._fastmsg",
    "Message objects built in C for Consumer._decode_batches (see csrc/fastmsg.c).",
    -1, methods, NULL, NULL, NULL, NULL,
};

/* _bridge.<name> as an int64 into *out; absent: *out unchanged. */
static int read_limit(PyObject *bridge, const char *name, int64_t *out)
{
    PyObject *v = PyObject_GetAttrString(bridge, name);
    if (v == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    long long x = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (x < 0) {
        PyErr_Format(PyExc_ImportError, "pylog._bridge.%s is negative", name);
        return -1;
    }
    *out = (int64_t)x;
    return 0;
}

static int add_int64(PyObject *m, const char *name, int64_t v)
{
    PyObject *o = PyLong_FromLongLong(v);
    if (o == NULL)
        return -1;
    if (PyModule_AddObject(m, name, o) < 0) {   /* steals o only on success */
        Py_DECREF(o);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__fastmsg(void)
{
    PyObject *bridge = PyImport_ImportModule("pylog._bridge");
    if (bridge == NULL)
        return NULL;
    int64_t max_records = INT64_MAX, max_headers = INT64_MAX;
    int rc = read_limit(bridge, "MAX_BATCH_RECORDS", &max_records) ||
             read_limit(bridge, "MAX_RECORD_HEADERS", &max_headers);
    Py_DECREF(bridge);
    if (rc)
        return NULL;
    PyObject *errors = PyImport_ImportModule("pylog.errors");
    if (errors == NULL)
        return NULL;
    PyObject *exc = PyObject_GetAttrString(errors, "CorruptRecordError");
    Py_DECREF(errors);
    if (exc == NULL)
        return NULL;
    if (!PyExceptionClass_Check(exc)) {
        Py_DECREF(exc);
        PyErr_SetString(PyExc_ImportError, "pylog.errors.CorruptRecordError is not an exception class");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) {
        Py_DECREF(exc);
        return NULL;
    }
    if (pl_message_type_ready() < 0 ||
        PyModule_AddObjectRef(m, "Message", (PyObject *)&pl_MessageType) < 0 ||
        add_int64(m, "MAX_BATCH_RECORDS", max_records) < 0 ||
        add_int64(m, "MAX_RECORD_HEADERS", max_headers) < 0) {
        Py_DECREF(exc);
        Py_DECREF(m);
        return NULL;
    }
    Py_XDECREF(CorruptRecordError);
    CorruptRecordError = exc;           /* kept for the life of the process */
    max_batch_records = max_records;
    max_record_headers = max_headers;
    return m;
}
