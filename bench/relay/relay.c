/*
 * A do-nothing MQTT relay: the floor under the device-scale scenarios of bench/compare.sh.
 *
 * It answers CONNECT, SUBSCRIBE and PINGREQ, acknowledges QoS 1 publishes, and writes each
 * PUBLISH unchanged to the connections whose filter matches its topic. It keeps no
 * session, checks nothing, retains nothing and queues nothing beyond what a socket would
 * not take: what is left of a broker's cost at device rates is then the system calls and
 * the kernel's TCP work for each packet, which is what this program measures. It is single
 * threaded, like Mosquitto, and has two I/O loops, so the difference between them is the
 * cost of the readiness model alone:
 *
 *   relay PORT            epoll: one recv per readable socket, and at the end of each
 *                         turn one send per connection with everything the turn gave it
 *   relay --uring PORT    io_uring: multishot accept and receive into a provided-buffer
 *                         ring; one send in flight per connection, what arrives meanwhile
 *                         sent together after it; the sends are submitted together with
 *                         the wait for completions (one io_uring_enter per turn of the
 *                         loop); IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN
 *
 * Both write what one turn of the loop gave a connection in one send, as midge does, so
 * that under load (many packets per read) they differ only in how they wait and cross into
 * the kernel; at device rates every turn has a packet or two and nothing is coalesced.
 *
 * With RELAY_TICK_US=N in the environment, either loop sleeps N microseconds after each
 * turn, so that what arrives meanwhile is handled in one batch with one wake-up: the
 * "coalescing per scheduler tick" candidate, which trades latency for fewer wake-ups.
 *
 * Not a broker and not part of midge: bench/compare.sh builds it with `FLOOR=1` (gcc and
 * Debian's liburing-dev). MQTT 3.1.1 and 5 (midge bench speaks either); only what
 * `midge bench` sends is handled (filters with + and #, but no shared subscriptions, no
 * retained messages, QoS 0 and 1), anything else closes the connection.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 65536
#define READ_CHUNK 65536

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p && n) die("realloc");
    return p;
}

/* A growable byte buffer. */
struct buf {
    uint8_t *data;
    size_t len, cap;
};

static void buf_append(struct buf *b, const uint8_t *data, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->data = xrealloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
}

static void buf_consume(struct buf *b, size_t n) {
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

static void buf_free(struct buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

struct conn {
    int open;         /* taking packets */
    unsigned gen;     /* which connection on this descriptor number, for the routes */
    int v5;           /* the CONNECT's protocol level was 5 */
    struct buf in;    /* bytes received, not yet a whole packet */
    struct buf out;   /* bytes to send at the end of the turn, or that the socket did not
                         take yet (epoll); waiting for the send in flight (io_uring) */
    int dirty;        /* epoll: in `dirty`, to be sent at the end of the turn */
    int want_out;     /* epoll: waiting for EPOLLOUT */
    int sending;      /* io_uring: a send is in flight; its buffer is `flight` */
    int receiving;    /* io_uring: the multishot receive is armed */
    struct buf flight;
};

static struct conn conns[MAX_FDS];

/* Topic -> subscribers, open addressing. Nothing is removed: a subscriber whose
 * connection has closed (its descriptor's generation moved on) is skipped. */
struct sub {
    int fd;
    unsigned gen;
};
struct route {
    char *topic;
    size_t topic_len;
    struct sub *subs;
    size_t nsubs;
};
static struct route *routes;
static size_t routes_cap, routes_len;

static uint64_t hash(const uint8_t *s, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
    return h;
}

static struct route *route_find(const uint8_t *topic, size_t n, int create) {
    if (create && (routes_len + 1) * 2 > routes_cap) {
        size_t old_cap = routes_cap;
        struct route *old = routes;
        routes_cap = old_cap ? old_cap * 2 : 1024;
        routes = calloc(routes_cap, sizeof *routes);
        if (!routes) die("calloc");
        for (size_t i = 0; i < old_cap; i++) {
            if (!old[i].topic) continue;
            size_t j = hash((uint8_t *)old[i].topic, old[i].topic_len) & (routes_cap - 1);
            while (routes[j].topic) j = (j + 1) & (routes_cap - 1);
            routes[j] = old[i];
        }
        free(old);
    }
    if (!routes_cap) return NULL;
    size_t j = hash(topic, n) & (routes_cap - 1);
    while (routes[j].topic) {
        if (routes[j].topic_len == n && memcmp(routes[j].topic, topic, n) == 0) return &routes[j];
        j = (j + 1) & (routes_cap - 1);
    }
    if (!create) return NULL;
    routes[j].topic = malloc(n);
    memcpy(routes[j].topic, topic, n);
    routes[j].topic_len = n;
    routes_len++;
    return &routes[j];
}

/* Filters with + or #: few in the scenarios (fanin's one subscriber), so a list. */
struct wild {
    char *filter;
    size_t len;
    struct sub to;
};
static struct wild *wilds;
static size_t nwilds;

/* MQTT topic matching: + is one level, # the rest (and the level above it). */
static int matches(const char *f, size_t flen, const uint8_t *t, size_t tlen) {
    size_t i = 0, j = 0;
    for (;;) {
        if (i < flen && f[i] == '#') return 1;
        if (i < flen && f[i] == '+') {
            while (j < tlen && t[j] != '/') j++;
            i++;
        } else {
            while (i < flen && j < tlen && f[i] != '/' && t[j] != '/') {
                if (f[i] != (char)t[j]) return 0;
                i++, j++;
            }
            if ((i < flen && f[i] != '/') || (j < tlen && t[j] != '/')) return 0;
        }
        if (i == flen || j == tlen) {
            /* "a/#" matches "a" */
            return i == flen ? j == tlen : (j == tlen && flen - i == 2 && f[i + 1] == '#');
        }
        i++, j++; /* both at '/' */
    }
}

static void subscribe(int fd, const uint8_t *topic, size_t n) {
    if (memchr(topic, '+', n) || memchr(topic, '#', n)) {
        wilds = xrealloc(wilds, (nwilds + 1) * sizeof *wilds);
        wilds[nwilds].filter = malloc(n);
        memcpy(wilds[nwilds].filter, topic, n);
        wilds[nwilds].len = n;
        wilds[nwilds].to = (struct sub){fd, conns[fd].gen};
        nwilds++;
        return;
    }
    struct route *r = route_find(topic, n, 1);
    struct sub me = {fd, conns[fd].gen};
    for (size_t i = 0; i < r->nsubs; i++)
        if (r->subs[i].fd == fd && r->subs[i].gen == me.gen) return;
    r->subs = xrealloc(r->subs, (r->nsubs + 1) * sizeof me);
    r->subs[r->nsubs++] = me;
}

/* ---- the two I/O models: how a packet is sent and how a connection is closed ---- */

static int uring_mode;
static struct timespec tick; /* RELAY_TICK_US */

static void after_turn(void) {
    if (tick.tv_nsec) nanosleep(&tick, NULL);
}

static struct io_uring ring;
static int epfd;
static int dirty[MAX_FDS], ndirty; /* epoll: connections with bytes to send this turn */

static void close_conn(int fd);

static void epoll_set(int fd, int want_out) {
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.fd = fd};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) < 0) die("epoll_ctl");
}

/* io_uring user data: the descriptor and what the operation was. */
enum op { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3 };
static uint64_t udata(enum op op, int fd) { return ((uint64_t)op << 32) | (uint32_t)fd; }

static struct io_uring_sqe *get_sqe(void) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (!sqe) {
        io_uring_submit(&ring);
        sqe = io_uring_get_sqe(&ring);
        if (!sqe) die("io_uring_get_sqe");
    }
    return sqe;
}

/* Sends `flight`, the connection's bytes in flight. */
static void uring_send_flight(int fd) {
    struct conn *c = &conns[fd];
    c->sending = 1;
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_send(sqe, fd, c->flight.data, c->flight.len, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, udata(OP_SEND, fd));
}

/* The pending bytes become the send in flight; new ones wait behind it. */
static void uring_start_send(int fd) {
    struct conn *c = &conns[fd];
    struct buf t = c->flight;
    c->flight = c->out;
    c->out = t;
    c->out.len = 0;
    uring_send_flight(fd);
}

static void send_bytes(int fd, const uint8_t *data, size_t n) {
    struct conn *c = &conns[fd];
    if (!c->open) return;
    if (uring_mode) {
        buf_append(&c->out, data, n);
        if (!c->sending) uring_start_send(fd);
        return;
    }
    buf_append(&c->out, data, n);
    if (!c->dirty && !c->want_out && ndirty < MAX_FDS) { /* else sent from EPOLLOUT */
        c->dirty = 1;
        dirty[ndirty++] = fd;
    }
}

/* epoll: sends what the socket takes of `out`; waits for EPOLLOUT for the rest. */
static void flush_out(int fd) {
    struct conn *c = &conns[fd];
    ssize_t w = send(fd, c->out.data, c->out.len, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN) {
        close_conn(fd);
        return;
    }
    if (w > 0) buf_consume(&c->out, (size_t)w);
    if ((c->out.len != 0) != c->want_out) {
        c->want_out = c->out.len != 0;
        epoll_set(fd, c->want_out);
    }
}

/* ---- MQTT: just enough for midge bench ---- */

/* Reads a two-byte length-prefixed string at p (within end); returns its start or NULL. */
static const uint8_t *mqtt_str(const uint8_t *p, const uint8_t *end, size_t *n) {
    if (end - p < 2) return NULL;
    *n = (size_t)p[0] << 8 | p[1];
    if ((size_t)(end - p - 2) < *n) return NULL;
    return p + 2;
}

/* Skips a variable byte integer (v5 property length) and that many bytes. */
static const uint8_t *skip_props(const uint8_t *p, const uint8_t *end) {
    size_t len = 0;
    for (int shift = 0; shift < 28 && p < end; shift += 7) {
        uint8_t b = *p++;
        len |= (size_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return (size_t)(end - p) < len ? NULL : p + len;
    }
    return NULL;
}

/* Handles one whole packet; returns 0 to close the connection. */
static int handle(int fd, const uint8_t *pkt, size_t len, size_t header) {
    struct conn *c = &conns[fd];
    const uint8_t *body = pkt + header, *end = pkt + len;
    switch (pkt[0] >> 4) {
    case 1: { /* CONNECT */
        size_t n;
        const uint8_t *name = mqtt_str(body, end, &n);
        if (!name || name + n >= end) return 0;
        c->v5 = name[n] == 5;
        static const uint8_t connack4[] = {0x20, 2, 0, 0}, connack5[] = {0x20, 3, 0, 0, 0};
        if (c->v5) send_bytes(fd, connack5, sizeof connack5);
        else send_bytes(fd, connack4, sizeof connack4);
        return 1;
    }
    case 3: { /* PUBLISH: route unchanged, acknowledge QoS 1 */
        int qos = (pkt[0] >> 1) & 3;
        size_t n;
        const uint8_t *topic = mqtt_str(body, end, &n);
        if (!topic || qos > 1) return 0;
        struct route *r = route_find(topic, n, 0);
        if (r)
            for (size_t i = 0; i < r->nsubs; i++) {
                struct sub to = r->subs[i];
                if (conns[to.fd].open && conns[to.fd].gen == to.gen) send_bytes(to.fd, pkt, len);
            }
        for (size_t i = 0; i < nwilds; i++) {
            struct sub to = wilds[i].to;
            if (conns[to.fd].open && conns[to.fd].gen == to.gen &&
                matches(wilds[i].filter, wilds[i].len, topic, n))
                send_bytes(to.fd, pkt, len);
        }
        if (qos == 1) {
            const uint8_t *id = topic + n;
            if (end - id < 2) return 0;
            uint8_t puback[] = {0x40, 2, id[0], id[1]};
            send_bytes(fd, puback, sizeof puback);
        }
        return 1;
    }
    case 4: /* PUBACK from a subscriber: nothing to do */
        return 1;
    case 8: { /* SUBSCRIBE: every filter granted at the QoS asked for */
        if (end - body < 2) return 0;
        uint8_t ack[260] = {0x90, 0, body[0], body[1]};
        size_t alen = 4;
        const uint8_t *p = body + 2;
        if (c->v5) {
            p = skip_props(p, end);
            if (!p) return 0;
            ack[alen++] = 0;
        }
        while (p < end) {
            size_t n;
            const uint8_t *topic = mqtt_str(p, end, &n);
            if (!topic || topic + n >= end || alen >= sizeof ack) return 0;
            subscribe(fd, topic, n);
            ack[alen++] = topic[n] & 3;
            p = topic + n + 1;
        }
        if (alen - 2 > 127) return 0;
        ack[1] = (uint8_t)(alen - 2);
        send_bytes(fd, ack, alen);
        return 1;
    }
    case 12: { /* PINGREQ */
        static const uint8_t pingresp[] = {0xd0, 0};
        send_bytes(fd, pingresp, sizeof pingresp);
        return 1;
    }
    default: /* DISCONNECT and anything else */
        return 0;
    }
}

/* Handles every whole packet in data (received bytes), keeping a partial one. */
static void received(int fd, const uint8_t *data, size_t n) {
    struct conn *c = &conns[fd];
    const uint8_t *p = data, *end = data + n;
    if (c->in.len) { /* a partial packet is waiting: continue it */
        buf_append(&c->in, data, n);
        p = c->in.data;
        end = c->in.data + c->in.len;
    }
    while (end - p >= 2) {
        size_t rem = 0, h = 1;
        int shift = 0, whole = 0;
        while (h < 5 && p + h < end) {
            uint8_t b = p[h++];
            rem |= (size_t)(b & 0x7f) << shift;
            shift += 7;
            if (!(b & 0x80)) {
                whole = 1;
                break;
            }
        }
        if (!whole) {
            if (h >= 5) {
                close_conn(fd);
                return;
            }
            break;
        }
        if ((size_t)(end - p) < h + rem) break;
        if (!handle(fd, p, h + rem, h)) {
            close_conn(fd);
            return;
        }
        if (!c->open) return; /* a send to itself failed */
        p += h + rem;
    }
    if (c->in.len) {
        buf_consume(&c->in, (size_t)(p - c->in.data));
    } else if (p < end) {
        buf_append(&c->in, p, (size_t)(end - p));
    }
}

static void open_conn(int fd) {
    if (fd >= MAX_FDS) {
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conns[fd].open = 1;
    conns[fd].gen++;
    conns[fd].v5 = 0;
    conns[fd].dirty = 0;
    conns[fd].want_out = 0;
}

/* io_uring: the descriptor is closed only once no operation on it is left, so its number
 * cannot be reused while a completion or cancellation may still name it. */
static void maybe_release(int fd) {
    struct conn *c = &conns[fd];
    if (c->open || c->receiving || c->sending) return;
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->flight);
    close(fd);
}

static void close_conn(int fd) {
    struct conn *c = &conns[fd];
    if (!c->open) return;
    c->open = 0;
    if (uring_mode) {
        if (c->receiving) {
            /* Ends the multishot receive; its last completion releases the descriptor. */
            struct io_uring_sqe *sqe = get_sqe();
            io_uring_prep_cancel64(sqe, udata(OP_RECV, fd), 0);
            io_uring_sqe_set_data64(sqe, 0);
            shutdown(fd, SHUT_RDWR);
        }
        maybe_release(fd);
    } else {
        buf_free(&c->in);
        buf_free(&c->out);
        close(fd);
    }
}

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0) die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(fd, 4096) < 0) die("listen");
    return fd;
}

/* ---- epoll ---- */

static void run_epoll(int lfd) {
    static uint8_t chunk[READ_CHUNK];
    struct epoll_event evs[256];
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    for (;;) {
        int n = epoll_wait(epfd, evs, 256, -1);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (cfd < 0) continue;
                open_conn(cfd);
                if (cfd >= MAX_FDS) continue;
                struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, &cev);
                continue;
            }
            struct conn *c = &conns[fd];
            if ((evs[i].events & EPOLLOUT) && c->open && c->want_out) flush_out(fd);
            if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && c->open) {
                ssize_t r = recv(fd, chunk, sizeof chunk, 0);
                if (r == 0 || (r < 0 && errno != EAGAIN)) close_conn(fd);
                else if (r > 0) received(fd, chunk, (size_t)r);
            }
        }
        for (int i = 0; i < ndirty; i++) {
            int fd = dirty[i];
            conns[fd].dirty = 0;
            if (conns[fd].open && !conns[fd].want_out) flush_out(fd);
        }
        ndirty = 0;
        after_turn();
    }
}

/* ---- io_uring ---- */

#define BUF_GROUP 1
#define BUF_COUNT 4096 /* a power of two */
#define BUF_SIZE 4096
static struct io_uring_buf_ring *buf_ring;
static uint8_t *bufs;

static void give_back(int bid) {
    io_uring_buf_ring_add(buf_ring, bufs + (size_t)bid * BUF_SIZE, BUF_SIZE, bid,
                          io_uring_buf_ring_mask(BUF_COUNT), 0);
    io_uring_buf_ring_advance(buf_ring, 1);
}

static void arm_recv(int fd) {
    struct io_uring_sqe *sqe = get_sqe();
    conns[fd].receiving = 1;
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BUF_GROUP;
    io_uring_sqe_set_data64(sqe, udata(OP_RECV, fd));
}

static void arm_accept(int lfd) {
    struct io_uring_sqe *sqe = get_sqe();
    io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, 0);
    io_uring_sqe_set_data64(sqe, udata(OP_ACCEPT, lfd));
}

static void run_uring(int lfd) {
    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    p.flags |= IORING_SETUP_CQSIZE;
    p.cq_entries = 65536;
    int err = io_uring_queue_init_params(4096, &ring, &p);
    if (err < 0) {
        errno = -err;
        die("io_uring_queue_init_params");
    }
    size_t ring_bytes = BUF_COUNT * sizeof(struct io_uring_buf);
    if (posix_memalign((void **)&buf_ring, 4096, ring_bytes)) die("posix_memalign");
    bufs = malloc((size_t)BUF_COUNT * BUF_SIZE);
    if (!bufs) die("malloc");
    io_uring_buf_ring_init(buf_ring);
    struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)buf_ring,
                                   .ring_entries = BUF_COUNT, .bgid = BUF_GROUP};
    err = io_uring_register_buf_ring(&ring, &reg, 0);
    if (err < 0) {
        errno = -err;
        die("io_uring_register_buf_ring");
    }
    for (int i = 0; i < BUF_COUNT; i++)
        io_uring_buf_ring_add(buf_ring, bufs + (size_t)i * BUF_SIZE, BUF_SIZE, i,
                              io_uring_buf_ring_mask(BUF_COUNT), i);
    io_uring_buf_ring_advance(buf_ring, BUF_COUNT);
    arm_accept(lfd);

    for (;;) {
        /* One system call: everything queued since the last turn, and the wait. */
        err = io_uring_submit_and_wait(&ring, 1);
        if (err < 0 && err != -EINTR) {
            errno = -err;
            die("io_uring_submit_and_wait");
        }
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            uint64_t ud = io_uring_cqe_get_data64(cqe);
            int op = (int)(ud >> 32), fd = (int)(uint32_t)ud, res = cqe->res;
            int more = cqe->flags & IORING_CQE_F_MORE;
            switch (op) {
            case OP_ACCEPT:
                if (res >= 0) {
                    open_conn(res);
                    if (res < MAX_FDS) arm_recv(res);
                }
                if (!more) arm_accept(lfd);
                break;
            case OP_RECV: {
                struct conn *c = &conns[fd];
                if (cqe->flags & IORING_CQE_F_BUFFER) {
                    int bid = (int)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
                    if (res > 0 && c->open) received(fd, bufs + (size_t)bid * BUF_SIZE, (size_t)res);
                    give_back(bid);
                }
                if (!more) c->receiving = 0;
                if (res == 0 || (res < 0 && res != -ENOBUFS)) {
                    if (c->open) close_conn(fd);
                    else maybe_release(fd);
                } else if (!more) {
                    if (c->open) arm_recv(fd); /* out of buffers, or the kernel ended it */
                    else maybe_release(fd);
                }
                break;
            }
            case OP_SEND: {
                struct conn *c = &conns[fd];
                c->sending = 0;
                if (c->open && res >= 0 && (size_t)res < c->flight.len) {
                    /* A short send: the rest goes first, what waited behind it after. */
                    buf_consume(&c->flight, (size_t)res);
                    buf_append(&c->flight, c->out.data, c->out.len);
                    c->out.len = 0;
                    uring_send_flight(fd);
                } else if (c->open && res < 0) {
                    close_conn(fd);
                } else if (c->open && c->out.len) {
                    c->flight.len = 0;
                    uring_start_send(fd);
                } else {
                    c->flight.len = 0;
                    maybe_release(fd);
                }
                break;
            }
            default: /* a cancellation's own completion */
                break;
            }
        }
        io_uring_cq_advance(&ring, seen);
        after_turn();
    }
}

int main(int argc, char **argv) {
    int a = 1;
    if (a < argc && strcmp(argv[a], "--uring") == 0) {
        uring_mode = 1;
        a++;
    }
    if (a + 1 != argc) {
        fprintf(stderr, "usage: relay [--uring] PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    const char *t = getenv("RELAY_TICK_US");
    long tick_us = t ? atol(t) : 0;
    if (tick_us > 0 && tick_us < 1000000) tick.tv_nsec = tick_us * 1000;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int lfd = listen_on(atoi(argv[a]));
    if (uring_mode) run_uring(lfd);
    else run_epoll(lfd);
    return 0;
}
