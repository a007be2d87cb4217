/* fastmsg.c -- pylog._fastmsg: build pylog.message.Message objects in C.
 *
 * Consumer._decode_batches calls decode_messages() once per (uncompressed or
 * already decompressed) records region.  The Python loop it replaces runs
 * pl_decode_records, unpacks 8 int64 per record into Python ints, slices key
 * and value and calls Message.__init__ with 9 arguments; here one pass over
 * the bytes validates each record and fills a Message directly.
 *
 * Instances.  The Message class is the Python one (message.py): its
 * __slots__ are member descriptors, each storing a PyObject * at a fixed
 * offset in the instance.  On first use with a class the offsets are read
 * from the descriptors (cls._topic, cls._partition, ...) and cross-checked
 * against every object slot the class and its bases define (tp_members);
 * instances are then made with cls->tp_alloc (zeroed, GC-tracked, a
 * reference on the heap type) and every slot is set: the 11 known fields,
 * and None in any other slot, since an unset slot raises AttributeError.
 * Message.__init__ is not run; what it would compute is computed here
 * (tstype is TIMESTAMP_NOT_AVAILABLE when the timestamp is negative).  A
 * type's instance layout cannot change after the class is created, so the
 * offsets are cached by class identity (with a reference to the class).
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

/* ---- the Message layout ---- */
enum {
    F_TOPIC, F_PARTITION, F_OFFSET, F_KEY, F_VALUE, F_HEADERS, F_TIMESTAMP,
    F_TSTYPE, F_ERROR, F_LATENCY, F_LEADER_EPOCH, F_COUNT
};

static const char *const FIELD_NAMES[F_COUNT] = {
    "_topic", "_partition", "_offset", "_key", "_value", "_headers", "_timestamp",
    "_tstype", "_error", "_latency", "_leader_epoch",
};

#define MAX_EXTRA 32    /* object slots beyond the known fields (set to None) */

typedef struct {
    PyTypeObject *cls;              /* strong reference; NULL until first use */
    Py_ssize_t off[F_COUNT];
    int n_extra;
    Py_ssize_t extra[MAX_EXTRA];
} layout_t;

static layout_t cached;

static int valid_slot_offset(PyTypeObject *cls, Py_ssize_t off)
{
    return off >= (Py_ssize_t)sizeof(PyObject) &&
           off <= cls->tp_basicsize - (Py_ssize_t)sizeof(PyObject *) &&
           off % (Py_ssize_t)sizeof(PyObject *) == 0;
}

/* Fill *L for cls; on error set an exception and return -1 (*L untouched). */
static int lookup_layout(PyTypeObject *cls, layout_t *L)
{
    layout_t tmp;
    memset(&tmp, 0, sizeof tmp);
    if (cls->tp_alloc == NULL || cls->tp_itemsize != 0) {
        PyErr_Format(PyExc_TypeError, "%s cannot be allocated by pylog._fastmsg", cls->tp_name);
        return -1;
    }
    /* Offsets of the known fields, from their member descriptors. */
    for (int i = 0; i < F_COUNT; i++) {
        PyObject *d = PyObject_GetAttrString((PyObject *)cls, FIELD_NAMES[i]);
        if (d == NULL) {
            if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
                PyErr_Clear();
                PyErr_Format(PyExc_TypeError, "%s has no attribute %s: not a Message class",
                             cls->tp_name, FIELD_NAMES[i]);
            }
            return -1;
        }
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type);
        PyMemberDef *m = ok ? ((PyMemberDescrObject *)d)->d_member : NULL;
        ok = ok && m->type == Py_T_OBJECT_EX && !(m->flags & Py_READONLY) &&
             PyType_IsSubtype(cls, PyDescr_TYPE(d)) && valid_slot_offset(cls, m->offset);
        if (ok) {
            tmp.off[i] = m->offset;
            for (int j = 0; j < i; j++)
                ok = ok && tmp.off[j] != m->offset;
        }
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a writable __slots__ member",
                         cls->tp_name, FIELD_NAMES[i]);
            return -1;
        }
    }
    /* Every object slot of the class and its bases: each must be a known
     * field or gets None.  Only Python classes (whose slots are all in
     * tp_members) and object itself may be in the MRO, so that tp_alloc's
     * zeroed memory plus these slots is a whole instance. */
    PyObject *mro = cls->tp_mro;
    if (mro == NULL || !PyTuple_Check(mro)) {
        PyErr_Format(PyExc_TypeError, "%s has no MRO", cls->tp_name);
        return -1;
    }
    int found[F_COUNT] = {0};
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(mro); k++) {
        PyTypeObject *t = (PyTypeObject *)PyTuple_GET_ITEM(mro, k);
        if (t == &PyBaseObject_Type)
            continue;
        if (!(t->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
            PyErr_Format(PyExc_TypeError, "%s derives from the C type %s: "
                         "pylog._fastmsg cannot build it", cls->tp_name, t->tp_name);
            return -1;
        }
        for (PyMemberDef *m = t->tp_members; m != NULL && m->name != NULL; m++) {
            if (m->type != Py_T_OBJECT_EX)
                continue;
            int j;
            for (j = 0; j < F_COUNT && tmp.off[j] != m->offset; j++)
                ;
            if (j < F_COUNT) {
                found[j] = 1;
                continue;
            }
            if (!valid_slot_offset(cls, m->offset) || tmp.n_extra == MAX_EXTRA) {
                PyErr_Format(PyExc_TypeError, "%s: slot %s cannot be set by pylog._fastmsg",
                             cls->tp_name, m->name);
                return -1;
            }
            tmp.extra[tmp.n_extra++] = m->offset;
        }
    }
    for (int i = 0; i < F_COUNT; i++) {
        if (!found[i]) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot of the class or its bases",
                         cls->tp_name, FIELD_NAMES[i]);
            return -1;
        }
    }
    Py_INCREF(cls);
    tmp.cls = cls;
    *L = tmp;
    return 0;
}

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

static PyObject *bytes_or_none(const uint8_t *p, int64_t len)
{
    if (len < 0) {
        Py_INCREF(Py_None);
        return Py_None;
    }
    return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)len);
}

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* Set a slot of a fresh instance (all NULL), taking the reference. */
static inline void set_slot(PyObject *obj, Py_ssize_t off, PyObject *v)
{
    SLOT(obj, off) = v;
}

static inline PyObject *newref(PyObject *o)
{
    Py_INCREF(o);
    return o;
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
static int decode_region(const layout_t *L, const uint8_t *region, Py_ssize_t len,
                         const batch_args *a, PyObject **msgs, Py_ssize_t *n, damage_t *dmg)
{
    const uint8_t *p = region, *end = region + len;
    PyObject *ts_obj = NULL, *tstype_obj = NULL, *no_tstype = NULL;
    int64_t ts_cur = 0;
    int rc = -2;
    if ((tstype_obj = PyLong_FromLong(a->tstype)) == NULL ||
        (no_tstype = PyLong_FromLong(TIMESTAMP_NOT_AVAILABLE)) == NULL)
        goto out;
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
        /* Build the instance; a failure below DECREFs it, which clears the
         * slots already set (the others are still NULL). */
        PyObject *m = L->cls->tp_alloc(L->cls, 0);
        if (m == NULL) {
            Py_XDECREF(headers);
            goto out;
        }
        set_slot(m, L->off[F_HEADERS], headers != NULL ? headers : newref(Py_None));
        int64_t ts = a->tstype == TIMESTAMP_LOG_APPEND_TIME ? a->max_timestamp
                     : (int64_t)((uint64_t)a->base_timestamp + (uint64_t)ts_delta);
        if (ts_obj == NULL || ts != ts_cur) {   /* records of a batch often share one */
            Py_XDECREF(ts_obj);
            if ((ts_obj = PyLong_FromLongLong(ts)) == NULL) {
                Py_DECREF(m);
                goto out;
            }
            ts_cur = ts;
        }
        set_slot(m, L->off[F_TIMESTAMP], newref(ts_obj));
        set_slot(m, L->off[F_TSTYPE], newref(ts >= 0 ? tstype_obj : no_tstype));
        set_slot(m, L->off[F_TOPIC], newref(a->topic));
        set_slot(m, L->off[F_PARTITION], newref(a->partition));
        set_slot(m, L->off[F_ERROR], newref(Py_None));
        set_slot(m, L->off[F_LATENCY], newref(Py_None));
        set_slot(m, L->off[F_LEADER_EPOCH], newref(Py_None));
        for (int i = 0; i < L->n_extra; i++)
            set_slot(m, L->extra[i], newref(Py_None));
        PyObject *v;
        if ((v = PyLong_FromLongLong(offset)) == NULL) {
            Py_DECREF(m);
            goto out;
        }
        set_slot(m, L->off[F_OFFSET], v);
        if ((v = bytes_or_none(key, klen)) == NULL) {
            Py_DECREF(m);
            goto out;
        }
        set_slot(m, L->off[F_KEY], v);
        if ((v = bytes_or_none(value, vlen)) == NULL) {
            Py_DECREF(m);
            goto out;
        }
        set_slot(m, L->off[F_VALUE], v);
        msgs[(*n)++] = m;
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
    Py_XDECREF(tstype_obj);
    Py_XDECREF(no_tstype);
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
    if (!PyType_Check(cls_obj)) {
        PyErr_SetString(PyExc_TypeError, "cls must be a class");
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

    /* L: this call's copy of the layout, with its own reference to the
     * class, taken before anything (a class dealloc, a re-entrant call)
     * could replace the cache. */
    PyTypeObject *cls = (PyTypeObject *)cls_obj;
    layout_t L;
    if (cached.cls == cls) {
        L = cached;
        Py_INCREF(L.cls);
    } else {
        if (lookup_layout(cls, &L) < 0)         /* L.cls: the cache's reference */
            return NULL;
        Py_INCREF(L.cls);
        PyTypeObject *old = cached.cls;
        cached = L;
        Py_XDECREF(old);
    }

    Py_buffer view;
    if (PyObject_GetBuffer(bufobj, &view, PyBUF_SIMPLE) < 0) {
        Py_DECREF(L.cls);
        return NULL;
    }
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
    rc = decode_region(&L, (const uint8_t *)view.buf + start, len, &a, msgs, &n, &dmg);
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
    Py_DECREF(L.cls);
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
    if (add_int64(m, "MAX_BATCH_RECORDS", max_records) < 0 ||
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
